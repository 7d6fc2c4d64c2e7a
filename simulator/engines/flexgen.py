"""``flexgen``: FlexGen 0.1.x, the runtime of FMInference/FlexLLMGen (arXiv 2303.06865), as
its loop really runs (read from flexllmgen/flex_opt.py, pytorch_backend.py and compression.py
at commit 004ffef; facts, not code). OPT models, one GPU (its pipeline-parallel runtime,
dist_flex_opt.py, is not modelled); data-parallel replicas are independent processes.

Schedule
--------
FlexGen's "layers" are sub-layers: the input embedding, an attention and an MLP sub-layer
per decoder layer, the output embedding. With overlap, for each token step, sub-layer j and
GPU batch k, one **step** issues the next sub-layer's weight load (only when k = 0), the
next step's cache load, the previous step's cache and hidden-state stores, the compute of
(j, k), and then synchronizes (``torch.cuda.synchronize`` and the disk queue's join). So

* a weight transfer overlaps only GPU batch 0's compute, not the whole layer's (the
  prefetch scope): scopes ``*.first`` (k = 0: carries the next sub-layer's weights),
  ``*.mid`` and ``*.final`` (k = nb - 1: the MLP's last batch carries the next layer's
  first cache load); a step costs the slowest of its channels, and the steps add;
* every step starts with the host's Python bookkeeping after the previous sync, while the
  GPU idles (``Resource.SYNC``: joins every channel; ``STEP_HOST_LAUNCHES`` below);
* the host issues ~27 eager kernels per (layer, batch) - ``KERNELS`` - while the GPU runs
  them (channel ``host``, concurrent with ``compute``); CPU attention and the relay copies of
  unpinned tensors run on the same host thread.
Without overlap (``generation_loop_normal``) nothing synchronizes per step: the copies and
kernels are serial on the GPU's stream while the host runs ahead (channels: the stream,
and the host).

Executed operations (per step, one GPU batch of b sequences and t tokens, fp16, OPT)
-------------------------------------------------------------------------------------
* GEMMs as ``simulator.ops`` (the profile's tables); the prefill LM head runs over all
  b x s tokens (``F.linear`` of the whole sequence, then the last token is taken).
* Attention is unfused. Prefill materializes the b x heads x s x s scores and touches them
  six times (bmm writes, ``where`` reads and writes, softmax reads and writes, bmm reads).
  Decode permutes and reshapes the whole K and V into new tensors before each bmm: the cache
  is read, written and read again (3x a fused read).
* Elementwise traffic per token: attention 19 h (layer norm, q scaling, q/k/v permutes, the
  output transpose, the residual add, the K/V writes), MLP 13 h (layer norm, relu in place,
  residual); embeddings 4 h; x 2 bytes.
* CPU attention (``--cpu-cache-compute``): the cache is upcast into an fp32 workspace and
  attended on the host, at FlexGen's own fitted rate (``CPU_ATTENTION``), serial with the GPU.
* The CPU KV cache is not pinned: a GPU-side attention over it first copies each slice into
  pinned memory on the host thread (``pin_memory()``, at the profile's memcpy rate), then
  DMAs it; prefill stores go through the copy threads' pinned relay (``CACHE_STORE``).
  ``pin_weights=False`` (``--pin-weight 0``) leaves the CPU weights unpinned: the same relay.
  A step issues its loads before its compute, so these host copies delay the step's kernels:
  serial with the step (``Resource.SYNC``), not concurrent with the GPU.
* Disk tensors move through four copy threads (numpy files: buffered reads, so the page
  cache serves them when it holds them - ``disk_io="cached"``).
* 4-bit compression: each compressed weight is decompressed in every step that uses it (per
  GPU batch), six unfused passes; the compressed cache is decompressed at its full allocated
  length every decode step (``DEQUANT_BYTES``, ``DEQUANT_CACHE_BYTES``, at most
  ``NARROW_KERNEL_RATE``).

Placement: each sub-layer's tensors are placed whole, in the order disk, CPU, GPU of their
cumulative element count, by the midpoint of each tensor (``get_choice``/``init_weight_list``);
``realize`` returns those fractions. Activations live wholly on one tier. Buffers: the
current and the prefetched sub-layer's offloaded weights, the prefill's transient scores
(two b x heads x s x s tensors alive at once) and activations, the full-sequence logits.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from simulator.engines.base import Engine, EngineConstant, register
from simulator.engines.common import finish, shape_of
from simulator.errors import PolicyError
from simulator.memory import CPU, DECODE, DISK, GPU, PREFILL
from simulator.ops import split_gemm
from simulator.policy import Placement
from simulator.terms import (C0, CC, CD, CG, HC, HD, N_X, WC, WD, WG, Component, Resource, TermsBuilder,
                             channel_matrix, CH, CHANNELS, RES, RESOURCES)

C, R = Component, Resource
PRE, DEC = TermsBuilder.PRE, TermsBuilder.DEC
SUBLAYERS = ("attn", "mlp", "head")
BATCH_STEPS = ("first", "mid", "final")
SCOPES = tuple(f"{s}.{k}" for s in SUBLAYERS for k in BATCH_STEPS)
STEPS_OF = {sub: tuple(f"{sub}.{k}" for k in BATCH_STEPS) for sub in SUBLAYERS}  # a sub-layer's steps

SRC = "FMInference/FlexLLMGen@004ffef"
CPU_ATTENTION = EngineConstant(
    "cpu_attention_kv_bytes_per_s", 12.3e9, "bytes/s",
    f"{SRC} experimental/cost_model.py: cpu_flops = 0.0123 T (fitted on the T4 machine), applied to "
    "4 x bls x context x h FLOP per layer, i.e. one FLOP per byte of fp16 K/V; times its fitted correction "
    "1 + c1 log2(64/gbs) log2(4096/h) - c2 log2(64/gbs) - c3 log2(4096/h) (c = 0.0168, 0.0328, 0.0621; "
    "terms count only where positive). REFERENCE.md: the same rate predicts its H100 run within 1%.")
CPU_ATTENTION_FIT = (0.0168, 0.0328, 0.0621)
CACHE_STORE = EngineConstant(
    "cache_store_bytes_per_s", 4.0e9, "bytes/s",
    "REFERENCE.md (FlexGen runtime, H100 run): the prefill cache stores to the unpinned CPU cache go "
    "through a copy thread's pinned relay at ~4 GB/s, back-solved from the measured run.")
DEQUANT_BYTES = EngineConstant(
    "dequant_bytes_per_element", 13.0, "bytes read + written per decompressed element",
    f"{SRC} flexllmgen/compression.py decompress: >> 4 (0.5 + 0.5), strided store (0.5 + 2), & 0xF "
    "(0.5 + 0.5), strided store (0.5 + 2), div_ (2 + 2), add_ (2 + 2); REFERENCE.md: ~11.")
DEQUANT_CACHE_BYTES = EngineConstant(
    "dequant_cache_bytes_per_element", 19.0, "bytes per decompressed cache element",
    "the cache's groups run along head_dim (group_dim 2), so the two nibble stores write every other fp16 "
    "element: each 32-byte sector carries half its bytes, doubling the stores' write traffic (13 + 2 x 3).")
NARROW_KERNEL_RATE = EngineConstant(
    "narrow_kernel_bytes_per_s", 1.19e12, "bytes/s, at most",
    "derived from shared/data/flexgen_h100_2026-11-25.csv: the 4-bit run's prefill is 71 ms longer than the "
    "fp16 run's (0.486 vs 0.415 s) for 6.85e9 decompressed elements: 13 bytes each in 71 ms is 1.2 TB/s, 41% "
    "of the H100's 2.89 TB/s copy rate. PyTorch's uint8 elementwise kernels load 4 bytes per thread, too few "
    "in flight to fill HBM3 (Little's law); a GPU of lower bandwidth (the T4's 237 GB/s) runs them at its own rate.")
STEP_HOST_LAUNCHES = EngineConstant(
    "step_host_launches", 39.0, "kernel launches (the profile's gpu.kernel_launch_us) per step",
    "derived from shared/data/flexgen_h100_2026-11-25.csv (opt-6.7b all on the GPU, batch 32): a decode "
    "step takes 32.2 ms against ~19.6 ms of modelled GPU work, ~0.19 ms per sub-layer step of host time "
    "while the GPU idles after each sync; 0.19 ms / 5 us per launch.")
KERNELS = {("attn", "prefill"): 20, ("attn", "decode"): 20, ("mlp", "prefill"): 5, ("mlp", "decode"): 5,
           ("head", "prefill"): 12, ("head", "decode"): 12}  # pytorch_backend.py: mha/mha_gen, mlp, embeds
DEQUANT_KERNELS_PER_TENSOR = 8  # compression.py decompress: views, empty, 2 shifts, 2 strided stores, div_, add_
QUANT_KERNELS_PER_TENSOR = 12  # compress: min, max, scale, sub, mul_, clamp_, round_, to, 2 shifts, or, cat
ATTN_ELEMENTWISE_H, MLP_ELEMENTWISE_H, EMBED_ELEMENTWISE_H = 19, 13, 4
SCORE_PASSES = 6  # prefill scores: bmm write, where read+write, softmax read+write, bmm read


def flexgen_sublayer_tensors(model) -> dict[str, list[tuple[int, bool]]]:
    """(elements, is_matrix) of each FlexGen sub-layer's weight list, in its order."""
    h, f, V = model.hidden_size, model.ffn_dim, model.vocab_size
    return {
        "embed": [(V * h, True), ((model.max_position_embeddings + 2) * h, True)],
        "attn": [(h * h, True), (h, False)] * 4 + [(h, False), (h, False)],
        "mlp": [(f * h, True), (f, False), (h * f, True), (h, False), (h, False), (h, False)],
        "out": [(h, False), (h, False), (V * h, True)],
    }


def flexgen_assign(numels: list[int], placement: Placement) -> list[str]:
    """Tier of each tensor by ``init_weight_list``: the midpoint of its cumulative element
    range, against the cumulative percents in the order disk, CPU, GPU (strictly below the
    bound picks the tier; past every bound, the last: the GPU)."""
    sizes = np.asarray(numels, dtype=float)
    mids = (np.cumsum(sizes) - sizes / 2) / sizes.sum() * 100
    bounds = np.cumsum([100 * placement.disk_frac, 100 * placement.cpu_frac, 100 * placement.gpu_frac])
    names = ("disk", "cpu", "gpu")
    out = []
    for m in mids:
        i = next((k for k in range(3) if m < bounds[k]), 2)
        out.append(names[i])
    return out


def realized_weights(model, placement: Placement, compressed: bool, dtype: str = "fp16") -> Placement:
    """The fractions (by stored bytes, all sub-layers) FlexGen's placement really holds."""
    from simulator.compression import packed_bytes
    e = 2 if dtype != "fp32" else 4
    per_tier = {"gpu": 0.0, "cpu": 0.0, "disk": 0.0}
    counts = {"embed": 1, "attn": model.num_layers, "mlp": model.num_layers, "out": 1}
    for sub, tensors in flexgen_sublayer_tensors(model).items():
        tiers = flexgen_assign([n for n, _ in tensors], placement)
        for (n, mat), tier in zip(tensors, tiers):
            nbytes = packed_bytes(n // model.hidden_size, model.hidden_size) if (compressed and mat) else n * e
            per_tier[tier] += counts[sub] * nbytes
    total = sum(per_tier.values())
    g, c = per_tier["gpu"] / total, per_tier["cpu"] / total
    return Placement(g, c, max(0.0, 1.0 - g - c))


@functools.lru_cache(maxsize=64)
def _weight_options(model, compressed: bool) -> list:
    seen = {}
    for g in range(101):
        for c in range(101 - g):
            asked = Placement(g / 100, c / 100, (100 - g - c) / 100)
            real = realized_weights(model, asked, compressed)
            seen.setdefault((round(real.gpu_frac, 9), round(real.cpu_frac, 9)), (asked, real))
    return list(seen.values())


def cpu_attention_rate(b, h: int) -> np.ndarray:
    """FlexGen's fitted CPU attention rate (bytes/s of fp16 K/V) for GPU batch b and width h."""
    c1, c2, c3 = CPU_ATTENTION_FIT
    lb = np.maximum(0.0, np.log2(64.0 / np.asarray(b, dtype=float)))
    lh = max(0.0, math.log2(4096.0 / h))
    return CPU_ATTENTION.value * np.maximum(0.1, 1 + c1 * lb * lh - c2 * lb - c3 * lh)


@register
class FlexGenEngine(Engine):
    name = "flexgen"
    title = "FlexGen 0.1.x (FlexLLMGen runtime)"
    source = f"{SRC}: flexllmgen/flex_opt.py, pytorch_backend.py, compression.py"
    constants = (CPU_ATTENTION, CACHE_STORE, DEQUANT_BYTES, DEQUANT_CACHE_BYTES, NARROW_KERNEL_RATE, STEP_HOST_LAUNCHES)
    options = {"pin_weights": True, "decode_timing": "full"}
    DECODE_TIMINGS = ("full", "fewer_batch")

    def __init__(self, pin_weights: bool = True, decode_timing: str = "full"):
        if decode_timing not in self.DECODE_TIMINGS:
            raise PolicyError(f"flexgen decode_timing: {decode_timing!r} is not one of {', '.join(self.DECODE_TIMINGS)}")
        self.pin_weights = bool(pin_weights)
        self.decode_timing = decode_timing

    def check(self, model, hw, policy) -> None:
        if not model.is_opt:
            raise PolicyError(f"--engine flexgen: FlexGen 0.1.x runs OPT models only (flex_opt.py); "
                              f"{model.name} is {model.family}")
        if policy.tp > 1 or policy.pp > 1:
            raise PolicyError(f"--engine flexgen: tp {policy.tp} x pp {policy.pp}: the model is of FlexGen's "
                              "single-GPU runtime (flex_opt.py); use dp replicas or another engine")
        if sum(1 for v in policy.activations.as_tuple() if v > 1e-9) > 1:
            raise PolicyError(f"--engine flexgen: activations {policy.activations.to_percent_text()}: FlexGen keeps "
                              "the hidden states wholly on one tier (flex_opt.py act_home)")
        if policy.compress_cache and sum(1 for v in policy.cache.as_tuple() if v > 1e-9) > 1:
            raise PolicyError("--engine flexgen: a compressed cache must live wholly on one tier")
        if policy.dtype != "fp16":
            raise PolicyError(f"--engine flexgen: --dtype {policy.dtype}: FlexGen runs fp16 only")

    def realize(self, model, policy):
        w = realized_weights(model, policy.weights, policy.compress_weights)
        return policy.with_(weights=w) if w != policy.weights else policy

    def search_space(self, space):
        from dataclasses import replace
        return replace(space, dtype="fp16")

    def weight_options(self, model, fmt: str) -> list:
        """Every realization of an integer ``--percent`` (FlexGen's flag takes integers):
        (asked, realized) pairs, one per distinct realization."""
        return _weight_options(model, fmt == "int4")

    def cache_splits(self, model, gpu_batch_size: int, frac, compressed: bool) -> tuple[int, list]:
        """A mixed cache splits its b x heads rows in multiples of num_head (whole sequences);
        a compressed cache lives wholly on one tier."""
        from simulator.placement import row_options
        b = gpu_batch_size
        return b, ([(b, 0, 0), (0, b, 0), (0, 0, b)] if compressed else row_options(b, frac))

    def activation_splits(self, gpu_batch_size: int, frac) -> list[tuple[int, int, int]]:
        b = gpu_batch_size
        return [(b, 0, 0), (0, b, 0), (0, 0, b)]

    def build_terms(self, model, hw, workload, shape, dtype, tp=1, pp=1, dp=1):
        z = shape_of(model, hw, workload, shape, dtype, tp, pp, dp)
        P = len(shape)
        tb = TermsBuilder(P, z.num_segments, SCOPES)
        if self.decode_timing == "fewer_batch":  # FlexGen times the first decode step and extrapolates
            z = _first_step_context(z)
        steps = _batch_steps(z.nb)
        _weights(tb, z, self.pin_weights)
        _cache(tb, z, steps)
        _activations(tb, z, steps)
        _compute(tb, z)
        _compression(tb, z)
        _host(tb, z)
        mult = _scope_mult(z, self.decode_timing)
        links = hw.links
        ch = channel_matrix(links.h2d_bytes_per_s, links.d2h_bytes_per_s, links.duplex_bytes_per_s,
                            hw.device_is_host and not hw.host_copies_overlap, host_channel=True)
        return finish(tb, z, workload, shape, mult, ch, self.name, _buffers, SERIAL_CHANNELS)


def _serial_channels() -> np.ndarray:
    """No overlap: the GPU stream runs copies and kernels one after another while the host
    runs ahead; the per-step syncs of the overlapped loops are absent."""
    ser = np.zeros((len(CHANNELS), len(RESOURCES)))
    for r in RESOURCES:
        if r not in (Resource.HOST, Resource.SYNC):
            ser[CH["compute"], RES[r]] = 1.0
    ser[CH["host"], RES[Resource.HOST]] = ser[CH["host"], RES[Resource.CPU]] = 1.0
    return ser


SERIAL_CHANNELS = _serial_channels()


def _first_step_context(z):
    """``--debug fewer_batch``: decode is timed on the first decode step (context s + 1)
    and extrapolated to every step."""
    from dataclasses import replace
    return replace(z, ctx=np.full_like(z.ctx, z.s + 1.0))


def _batch_steps(nb: np.ndarray) -> dict:
    """Per batch-step scope, how many of the nb GPU batches it stands for (first, mid, final)."""
    nb = np.asarray(nb, dtype=float)
    return {"first": np.ones_like(nb), "mid": np.maximum(nb - 2, 0), "final": (nb > 1).astype(float)}


def _scope_mult(z, decode_timing: str) -> np.ndarray:
    """(P, seg, scope): L attention and MLP sub-layers per pass, one head (both embeddings),
    each split into its GPU-batch steps. ``fewer_batch``: FlexGen multiplies the mean of
    sub-layer steps 10..19 (five attention, five MLP) by its 2L + 2 layers."""
    L = z.rv.layers
    steps = _batch_steps(z.nb)
    P, nseg = len(z.b), z.num_segments
    out = np.zeros((P, nseg, len(SCOPES)))
    for i, name in enumerate(SCOPES):
        sub, k = name.split(".")
        out[:, :, i] = (L if sub != "head" else 1.0) * steps[k][:, None]
    if decode_timing == "fewer_batch" and L >= 10:
        for i, name in enumerate(SCOPES):
            sub, k = name.split(".")
            out[:, 1:, i] = (0.0 if sub == "head" else (L + 1.0)) * steps[k][:, None]
    return out


def _sub_bytes(z, sub: str) -> tuple[np.ndarray, float]:
    """(stored bytes, elements of the matrices) of one sub-layer's weights."""
    from simulator.compression import packed_bytes
    tensors = flexgen_sublayer_tensors(z.model)
    names = ("embed", "out") if sub == "head" else (sub,)
    stored16, packed, mats = 0.0, 0.0, 0.0
    for name in names:
        for n, mat in tensors[name]:
            stored16 += n * z.e
            packed += packed_bytes(n // z.model.hidden_size, z.model.hidden_size) if mat else n * z.e
            mats += n if mat else 0
    return np.where(z.cw > 0, packed, stored16), mats


def _weights(tb: TermsBuilder, z, pinned: bool) -> None:
    """The next sub-layer's offloaded weights move during the current sub-layer's first
    batch step: attention weights during the MLP's, MLP weights during the attention's, the
    embeddings during the head's. Unpinned CPU weights take the host's pin_memory relay."""
    hw = z.hw
    h2d = hw.links.h2d_bytes_per_s
    memcpy = hw.memcpy_bytes_per_s
    for carrier, loaded in (("attn", "mlp"), ("mlp", "attn"), ("head", "head")):
        nbytes, _ = _sub_bytes(z, loaded)
        scope = f"{carrier}.first"
        for seg in (PRE, DEC):
            tb.put(seg, scope, C.WEIGHT_LOAD, R.H2D, WC, nbytes / h2d)
            tb.put(seg, scope, C.WEIGHT_LOAD, R.H2D, WD, nbytes / h2d)
            tb.put(seg, scope, C.WEIGHT_LOAD, R.DISK_READ, WD, nbytes / z.disk_r)
            if not pinned:
                tb.put(seg, scope, C.WEIGHT_LOAD, R.SYNC, WC, nbytes / memcpy)
            tb.put_lat(seg, scope, "weight_load.cpu", hw.links.h2d_latency_s)
            tb.put_lat(seg, scope, "weight_load.disk", hw.links.h2d_latency_s)


def _cache(tb: TermsBuilder, z, steps: dict) -> None:
    """Cache loads for the next step and stores of the previous one. Attention step k loads
    batch k + 1's cache; the MLP's last step loads the next layer's batch 0 (with one GPU
    batch: its only step). Attention step k >= 1 stores batch k - 1's new K/V; the MLP's
    first step stores the last batch's."""
    hw, model = z.hw, z.model
    h2d, d2h = hw.links.h2d_bytes_per_s, hw.links.d2h_bytes_per_s
    d2h_pageable = hw.links.d2h_pageable_bytes_per_s or d2h
    memcpy = hw.memcpy_bytes_per_s
    b, s, catt = z.b, z.s, z.catt
    nb1 = (z.nb == 1).astype(float)
    load_in = {"attn.first": 1.0 - nb1, "attn.mid": np.ones_like(nb1), "mlp.first": nb1, "mlp.final": 1.0 - nb1}
    store_in = {"attn.mid": np.ones_like(nb1), "attn.final": 1.0 - nb1, "mlp.first": np.ones_like(nb1)}
    ctx = z.ctx[None, :]
    old = (b * z.kv_token)[:, None] * (ctx - 1)  # the cache attention reads, per batch
    gpu_side = (1.0 - catt)[:, None]
    for scope, share in load_in.items():
        share = share[:, None]
        for idx in (CC, CD):  # GPU attention over an unpinned CPU cache: pin_memory relay + DMA
            tb.put(DEC, scope, C.CACHE_LOAD, R.H2D, idx, share * gpu_side * old / h2d)
        tb.put(DEC, scope, C.CACHE_LOAD, R.SYNC, CC, share * gpu_side * old / memcpy)
        tb.put(DEC, scope, C.CACHE_LOAD, R.DISK_READ, CD, share * old / z.disk_r[:, None])
        tb.put_lat(DEC, scope, "cache_load.cpu", share * gpu_side * hw.links.h2d_latency_s)
        tb.put_lat(DEC, scope, "cache_load.disk", share * hw.links.h2d_latency_s)
    pre_bytes = b * s * z.kv_token
    new = b * z.kv_token
    for scope, share in store_in.items():
        for idx in (CC, CD):  # prefill: the copy threads' relay; decode: one token, pageable D2H
            tb.put(PRE, scope, C.CACHE_STORE, R.D2H, idx, share * pre_bytes / CACHE_STORE.value)
            tb.put(DEC, scope, C.CACHE_STORE, R.D2H, idx, share * new / d2h_pageable)
        tb.put(PRE, scope, C.CACHE_STORE, R.DISK_WRITE, CD, share * pre_bytes / z.disk_w)
        tb.put(DEC, scope, C.CACHE_STORE, R.DISK_WRITE, CD, share * new / z.disk_w)
        tb.put_lat(DEC, scope, "cache_store.cpu", share * hw.links.d2h_latency_s)
        tb.put_lat(DEC, scope, "cache_store.disk", share * hw.links.d2h_latency_s)
    # CPU attention's query out and value back, per attention step.
    q = catt * b * model.q_dim * z.e
    attn = STEPS_OF["attn"]
    for idx in (CC, CD):
        tb.put(DEC, attn, C.ATTENTION_IO, R.D2H, idx, q / d2h)
        tb.put(DEC, attn, C.ATTENTION_IO, R.H2D, idx, q / h2d)
    tb.put_lat(DEC, attn, "attention_io.d2h", catt * hw.links.d2h_latency_s)
    tb.put_lat(DEC, attn, "attention_io.h2d", catt * hw.links.h2d_latency_s)


def _activations(tb: TermsBuilder, z, steps: dict) -> None:
    """Hidden states on the CPU (or disk): every sub-layer step moves the previous batch's
    output to its home and the next batch's input back (``store_hidden``/``load_hidden``).
    Those ``move``s run outside the loop's stream contexts, on the default stream, so the GPU
    executes them between its kernels: serial with compute (rows on ``Resource.GPU``)."""
    hw = z.hw
    h2d, d2h = hw.links.h2d_bytes_per_s, hw.links.d2h_bytes_per_s
    for seg, tokens in ((PRE, z.s), (DEC, 1)):
        act = z.b * tokens * z.model.hidden_size * z.e
        for idx in (HC, HD):
            tb.put(seg, SCOPES, C.ACTIVATION_LOAD, R.GPU, idx, act / h2d)
            tb.put(seg, SCOPES, C.ACTIVATION_STORE, R.GPU, idx, act / d2h)
        tb.put(seg, SCOPES, C.ACTIVATION_LOAD, R.DISK_READ, HD, act / z.disk_r)
        tb.put(seg, SCOPES, C.ACTIVATION_STORE, R.DISK_WRITE, HD, act / z.disk_w)
        for term, a in (("activation_load.cpu", hw.links.h2d_latency_s),
                        ("activation_load.disk", hw.links.h2d_latency_s),
                        ("activation_store.cpu", hw.links.d2h_latency_s),
                        ("activation_store.disk", hw.links.d2h_latency_s)):
            tb.put_lat(seg, SCOPES, term, a)


def _gemm(z, m, k: int, n: int):
    return z.hw.device.matmul_time_s(m, k, n, z.dtype, z.e)


def _stream(z, nbytes):
    return z.hw.device.stream_time_s(nbytes, 0)


def _compute(tb: TermsBuilder, z) -> None:
    """GPU work of one step (the same for every batch step of a sub-layer), and CPU attention."""
    model, dev = z.model, z.hw.device
    h, f, V, heads = model.hidden_size, model.ffn_dim, model.vocab_size, model.num_heads
    b, s, e, catt = z.b, z.s, z.e, z.catt
    for seg, tokens in ((PRE, s), (DEC, 1)):
        m = b * tokens
        qkvo = sum(cnt * _gemm(z, m, *split_gemm(k, n, sp, 1)) for k, n, cnt, sp in
                   ((h, model.q_dim, 1, "col"), (h, model.kv_dim, 2, "col"), (model.q_dim, h, 1, "row")))
        mlp = _gemm(z, m, h, f) + _gemm(z, m, f, h)
        tb.put(seg, STEPS_OF["attn"], C.MATMUL, R.GPU, C0, qkvo)
        tb.put(seg, STEPS_OF["attn"], C.ELEMENTWISE, R.GPU, C0, _stream(z, m * ATTN_ELEMENTWISE_H * h * e))
        tb.put(seg, STEPS_OF["mlp"], C.MATMUL, R.GPU, C0, mlp)
        tb.put(seg, STEPS_OF["mlp"], C.ELEMENTWISE, R.GPU, C0, _stream(z, m * MLP_ELEMENTWISE_H * h * e))
        tb.put(seg, STEPS_OF["head"], C.ELEMENTWISE, R.GPU, C0, _stream(z, m * EMBED_ELEMENTWISE_H * h * e))
        # The LM head: over all b x s tokens in prefill.
        tb.put(seg, STEPS_OF["head"], C.MATMUL, R.GPU, C0, _gemm(z, m, h, V))
    # Prefill attention: two bmms of 2 b s^2 h FLOP and six passes over the b x heads x s^2 scores.
    peak = dev.peak_flop_per_s(z.dtype)
    scores = b * heads * s * s * e
    bmm = np.maximum(2.0 * b * s * s * h / peak, (scores + 2 * b * s * h * e) / dev.mem_bytes_per_s)
    pre_att = 2 * bmm + _stream(z, (SCORE_PASSES - 2) * scores + 3 * b * s * s)
    # Decode attention on the GPU: permute copies of K and V (read + write) and the bmms (read).
    ctx = z.ctx[None, :]
    kv = (b * z.kv_token16)[:, None] * ctx
    dec_att = _stream(z, 2 * kv) + dev.attention_read_time_s(kv, 4.0 * b[:, None] * ctx * model.q_dim, z.dtype)
    cpu_att = kv / cpu_attention_rate(b, h)[:, None]
    attn = STEPS_OF["attn"]
    tb.put(PRE, attn, C.ATTENTION, R.GPU, C0, pre_att)
    tb.put(DEC, attn, C.ATTENTION, R.GPU, C0, (1.0 - catt)[:, None] * dec_att)
    tb.put(DEC, attn, C.ATTENTION, R.GPU, CG, catt[:, None] * dec_att)
    for idx in (CC, CD):
        tb.put(DEC, attn, C.ATTENTION, R.CPU, idx, catt[:, None] * cpu_att)


def _narrow(z, nbytes):
    """Time of FlexGen's (de)compression kernels moving ``nbytes``: the device's streaming rate,
    capped at what PyTorch's uint8 kernels reach (``NARROW_KERNEL_RATE``). Unit: s."""
    return np.asarray(nbytes, dtype=float) / min(z.hw.device.mem_bytes_per_s, NARROW_KERNEL_RATE.value)


def _compression(tb: TermsBuilder, z) -> None:
    """Decompression of every compressed weight in every step that uses it; compression of
    the new cache; decompression of the whole allocated compressed cache each decode step."""
    cw, cc = z.cw, z.cc
    for sub in SUBLAYERS:
        _, mats = _sub_bytes(z, sub)
        t = cw * _narrow(z, mats * DEQUANT_BYTES.value)
        for seg in (PRE, DEC):
            tb.put(seg, STEPS_OF[sub], C.COMPRESSION, R.GPU, C0, t)
    b = z.b
    full = b * (z.s + z.n - 1) * z.kv_token16 / z.e  # elements of K and V at the allocated length
    new = b * z.s * z.kv_token16 / z.e  # elements the prefill compresses
    tb.put(PRE, STEPS_OF["attn"], C.COMPRESSION, R.GPU, C0, cc * _narrow(z, new * DEQUANT_CACHE_BYTES.value))
    tb.put(DEC, STEPS_OF["attn"], C.COMPRESSION, R.GPU, C0, cc * _narrow(z, full * DEQUANT_CACHE_BYTES.value))


def _host(tb: TermsBuilder, z) -> None:
    """The host thread: kernel launches of each step (concurrent with the GPU) and the
    bookkeeping after each sync (nothing else runs: SYNC)."""
    launch = z.hw.device.launch_s
    ncw = {"attn": 4, "mlp": 2, "head": 2}
    for seg, phase in ((PRE, "prefill"), (DEC, "decode")):
        for sub in SUBLAYERS:
            n = KERNELS[(sub, phase)] + z.cw * ncw[sub] * DEQUANT_KERNELS_PER_TENSOR
            if sub == "attn":
                n = n + z.cc * (2 * QUANT_KERNELS_PER_TENSOR + (2 * DEQUANT_KERNELS_PER_TENSOR if phase == "decode" else 0))
            tb.put(seg, STEPS_OF[sub], C.KERNEL_LAUNCH, R.HOST, C0, n * launch)
            tb.put(seg, STEPS_OF[sub], C.SYNCHRONIZATION, R.SYNC, C0, STEP_HOST_LAUNCHES.value * launch)


def _buffers(out: np.ndarray, z) -> None:
    """FlexGen's working buffers on the GPU: the current and the prefetched sub-layer's
    offloaded weights (at most the two largest sub-layers), both embeddings' token matrices
    (FlexGen allocates the input and the output embedding separately), the prefill's
    transients of the attention sub-layer (two b x heads x s x s score tensors alive at once,
    and ~8 hidden-sized activations: input, norm, q, k, v, their permuted copies) and the
    full-sequence logits of the output embedding; the CPU attention's fp32 workspace."""
    model = z.model
    e = 2
    h, heads, V = model.hidden_size, model.num_heads, model.vocab_size
    b, s = z.b, z.prompt_len
    comp = np.where(z.compress_weights > 0, 0.5625 / e, 1.0)  # int4 with fp16 min/scale per 64
    streamed = (4 * h * h + 2 * model.ffn_dim * h) * e * comp  # an attention and an MLP sub-layer
    for i in (WC, WD):
        out[:, :, GPU, i] += streamed[:, None]
    tied = V * h * e * comp * (1.0 if model.tie_word_embeddings else 0.0)  # the output embedding's own copy
    for tier, i in ((GPU, WG), (CPU, WC), (DISK, WD)):
        out[:, :, tier, i] += tied[:, None]
    pre_attn = 2 * b * heads * s * s * e + 8 * b * s * h * e
    pre_logits = b * s * V * e + 2 * b * s * h * e
    out[:, PREFILL, GPU, C0] += np.maximum(pre_attn, pre_logits) + z.compress_weights * V * h * e
    out[:, DECODE, GPU, C0] += b * (V + 8 * h) * e + z.compress_weights * V * h * e
    ws = z.cpu_attention * 2 * b * z.ctx_max * h * 4  # fp32 K and V workspace
    out[:, DECODE, CPU, CC] += ws
    out[:, DECODE, CPU, CD] += ws
