"""``accelerate``: a Hugging Face model run with HF Accelerate's big-model inference
(``device_map`` offload: ``dispatch_model`` / ``cpu_offload`` / ``disk_offload``), as its
hooks really run. Read from huggingface/accelerate ``src/accelerate/hooks.py``,
``big_modeling.py``, ``utils/modeling.py`` and ``utils/offload.py`` at v0.15.0 (cf22df9, the
version FlexGen's HF baseline pins: FMInference/FlexLLMGen@004ffef benchmark/hf_ds/README.md)
and checked unchanged in these respects at 16cb6eb (2026-07); the model's own kernels are
transformers' eager ones (``simulator.engines.hf_eager``). Facts, not code.

Schedule
--------
One batch of ``gpu_batch_size`` sequences goes through all layers in order (there is no
zig-zag block: ``num_gpu_batches`` is 1). ``dispatch_model`` attaches an
``AlignDevicesHook`` to every module that has parameters of its own; for a module placed on
"cpu" or "disk" its ``pre_forward`` sets each tensor to the execution device with
``set_module_tensor_to_device(..., value=weights_map[name])``, i.e. ``value.to(device)``:
a blocking copy on the compute stream (no ``non_blocking``, no side stream, no prefetch),
and ``post_forward`` sets it back to "meta". So a layer's copies wait for the previous
kernels and its kernels wait for its copies: **nothing overlaps**, and a pass costs the sum
of its parts (the engine's channels are one serial chain; ``overlap`` is realized False).

Facts behind the rates
----------------------
* CPU-offloaded weights are **not pinned**: ``dispatch_model`` builds the weights map from
  ``model.state_dict()`` of the CPU modules (``extract_submodules_state_dict``), ordinary
  pageable tensors; nothing in accelerate's offload path calls ``pin_memory``. They move at
  the profile's pageable rate (``common.pageable_h2d_s``).
* Disk-offloaded weights are numpy memory maps (``offload_state_dict`` writes ``.dat``
  files; ``load_offloaded_weight`` opens ``np.memmap(mode="r")`` and copies it with
  ``torch.tensor``) - buffered reads, so the page cache serves them when it holds them
  (``disk_io="cached"``), else the disk's rate (``"direct"``: cold cache, plus the copy out of
  the mapped pages at the host's memcpy rate); then the same pageable copy to the GPU.
  Safetensors checkpoints are read through ``safe_open`` (also memory-mapped).
* The KV cache (HF ``past_key_values``) and the activations live on the execution device.
* Each tensor is its own copy: the profile's per-transfer latency once per tensor.

Placement (``realize``): the device map assigns **whole decoder layers**, in order, to the
GPU first, then the CPU, then the disk; the embeddings (and OPT's tied LM head) come first in
the map and stay on the GPU (FlexGen's baseline device map puts ``embed_tokens``,
``embed_positions`` and ``lm_head`` on GPU 0: hf_opt.py ``get_hf_opt_model``). The requested
fractions are rounded to whole layers and reported as the realized policy.

Buffers: the largest offloaded tensor in flight on the GPU; the prefill's eager attention
scores (``b x heads x s x s``, the fp16 input and fp32 softmax output alive together) or
the logits of every prompt position, whichever is larger; in decode the previous step's whole
cache, which ``generate`` holds while the forward builds the new one
(``hf_eager.previous_cache_bytes``), and one step's logits.
"""

from __future__ import annotations

import numpy as np

from simulator.engines import hf_eager
from simulator.engines.base import Engine, register
from simulator.engines.common import finish, pageable_h2d_s, shape_of
from simulator.errors import PolicyError
from simulator.memory import DECODE, GPU, PREFILL
from simulator.models import DTYPE_BYTES
from simulator.ops import layer_matmul_time_s
from simulator.policy import Placement
from simulator.terms import C0, WC, WD, Component, Resource, TermsBuilder, serial_channel_matrix

C, R = Component, Resource
PRE, DEC = TermsBuilder.PRE, TermsBuilder.DEC
SCOPES = ("layer", "head")
SRC = "huggingface/accelerate@v0.15.0 (cf22df9)"
ENGINE_FLAG = "--engine accelerate"


def _single_tier(p: Placement) -> bool:
    return p.gpu_frac >= 1.0 - 1e-9


@register
class AccelerateEngine(Engine):
    name = "accelerate"
    title = "Hugging Face Accelerate device_map offload (big-model inference)"
    source = f"{SRC}: src/accelerate/hooks.py (AlignDevicesHook), big_modeling.py, utils/offload.py"
    tiers = {"weights": ("gpu", "cpu", "disk"), "cache": ("gpu",), "activations": ("gpu",)}

    def check(self, model, hw, policy) -> None:
        for kind in ("cache", "activations"):
            p = getattr(policy, kind)
            if not _single_tier(p):
                raise PolicyError(f"{ENGINE_FLAG}: --{kind} {p.to_percent_text()}: Accelerate keeps the "
                                  f"{'KV cache (past_key_values)' if kind == 'cache' else 'activations'} on the "
                                  "GPU (the execution device); allowed: 100,0,0")
        if policy.num_gpu_batches != 1:
            raise PolicyError(f"{ENGINE_FLAG}: --num-gpu-batches {policy.num_gpu_batches}: Accelerate runs one "
                              "batch through all layers (no zig-zag block); allowed: 1")
        if policy.compress_weights or policy.compress_cache:
            what = "--compress-weights" if policy.compress_weights else "--compress-cache"
            raise PolicyError(f"{ENGINE_FLAG}: {what}: Accelerate's offload moves the model's own "
                              "tensors; it has no group-wise 4-bit compression")
        if policy.cpu_attention:
            raise PolicyError(f"{ENGINE_FLAG}: --cpu-attention: Accelerate runs every layer on the execution "
                              "device (the GPU); attention never runs on the CPU")
        if policy.tp > 1 or policy.pp > 1:
            raise PolicyError(f"{ENGINE_FLAG}: tp {policy.tp} x pp {policy.pp}: the model is of a single-GPU "
                              "device map; use dp replicas or another engine")

    def realize(self, model, policy):
        w = realized_weights(model, policy.weights, policy.dtype)
        changes = {}
        if w != policy.weights:
            changes["weights"] = w
        if policy.overlap:
            changes["overlap"] = False  # blocking copies on the compute stream
        return policy.with_(**changes) if changes else policy

    searcher = "enumerate"

    def search_space(self, space):
        from dataclasses import replace
        return replace(space, num_gpu_batches=(1,), compress_weights=(False,), compress_cache=(False,),
                       cpu_attention=(False,))

    def candidate_policies(self, model, hw, workload, space, gpus: int = 1) -> list:
        """Per batch size and dtype: k decoder layers on the GPU and, of the rest, the most on
        the CPU that fit (the others on the disk), plus none on the CPU. Without overlap a layer
        costs what it moves - from the CPU its copy, from the disk its read as well - so moving a
        layer from the disk to the CPU never slows a run (the CPU tier's first layer adds one
        copy latency: hence j = 0 is kept); every other split is dominated. Which fit is read
        off the engine's own memory terms (linear in the fractions) at the fractions the device
        map realizes for that split (``realize``: the head stays on the GPU), as ``estimate``
        evaluates them."""
        from simulator.policy import Policy
        from simulator.sweep import feasible_mask
        from simulator.terms import N_X, BatchShape
        L = model.num_layers
        kj = np.array([(k, j) for k in range(L + 1) for j in range(L - k + 1)], float)
        out = []
        for dtype in space.dtypes_for(model, hw):
            X = np.zeros((len(kj), N_X))
            X[:, 0] = X[:, 4] = X[:, 7] = 1.0
            X[:, 1:4] = [realized_weights(model, Placement(k / L, j / L, (L - k - j) / L), dtype).as_tuple()
                         for k, j in kj]
            bs = np.asarray(space.gpu_batch_sizes, float)
            z0 = np.zeros(len(bs))
            terms = self.build_terms(model, hw, workload, BatchShape(bs, np.ones(len(bs)), z0, z0, z0, z0), dtype)
            for p, b in enumerate(space.gpu_batch_sizes):
                peak = (X @ terms.mem[p].reshape(-1, N_X).T).reshape(-1, 2, 3).max(axis=1)
                ok = feasible_mask(peak, terms.capacity_bytes, terms.shared_host_pool)
                for k in np.unique(kj[ok, 0]):
                    js = kj[ok & (kj[:, 0] == k), 1]
                    for j in sorted({js.max(), 0.0} if js.min() == 0 else {js.max()}):
                        k, j = int(k), int(j)
                        out.append(Policy(gpu_batch_size=int(b), weights=Placement(k / L, j / L, (L - k - j) / L),
                                          overlap=False, dtype=dtype, dp=gpus))
        return out

    def build_terms(self, model, hw, workload, shape, dtype, tp=1, pp=1, dp=1):
        z = shape_of(model, hw, workload, shape, dtype, tp, pp, dp)
        tb = TermsBuilder(len(shape), z.num_segments, SCOPES)
        _weights(tb, z, shape.disk_cached)
        _compute(tb, z)
        mult = np.tile(np.array([z.rv.layers, 1.0]), (len(shape), 1))
        serial = serial_channel_matrix()
        terms = finish(tb, z, workload, shape, mult, serial, self.name, _buffers)
        from dataclasses import replace
        return replace(terms, serial_matrix=serial, res_lin=None, res_lat=None, chan_lin=None, chan_lat=None,
                       serial_lin=None, serial_lat=None)


def layer_counts(model, weights: Placement, dtype: str) -> tuple[int, int, int]:
    """(GPU, CPU, disk) decoder layers of the device map for the requested fractions of all
    weight bytes: the head stays on the GPU, layers fill the GPU first, then the CPU, then the
    disk, each count rounded to the nearest whole layer."""
    L = model.num_layers
    layer = model.layer_weight_bytes(dtype)
    head = model.head_weight_bytes(dtype)
    total = L * layer + head
    n_g = int(np.clip(round((weights.gpu_frac * total - head) / layer), 0, L))
    n_gc = int(np.clip(round(((weights.gpu_frac + weights.cpu_frac) * total - head) / layer), n_g, L))
    if weights.disk_frac <= 1e-12:
        n_gc = L
    return n_g, n_gc - n_g, L - n_gc


def realized_weights(model, weights: Placement, dtype: str) -> Placement:
    """The fractions of all weight bytes the device map really holds on each tier."""
    n_g, n_c, n_d = layer_counts(model, weights, dtype)
    layer = model.layer_weight_bytes(dtype)
    head = model.head_weight_bytes(dtype)
    total = model.num_layers * layer + head
    c, d = n_c * layer / total, n_d * layer / total
    return Placement(1.0 - c - d, c, d)


def _weights(tb: TermsBuilder, z, cached) -> None:
    """Every pass copies the offloaded layers' tensors to the GPU, one blocking copy per
    tensor: the CPU share at the pageable rate; the disk share read out of its memory map
    (the disk or the page cache, plus the copy out of a cold mapping) and then the same
    pageable copy. The head is resident, so a fraction f of all weight bytes is
    f x W_all / L bytes per layer."""
    hw, model = z.hw, z.model
    W_all = z.rv.layers * model.layer_weight_bytes(z.dtype) + model.head_weight_bytes(z.dtype)
    per_layer = W_all / z.rv.layers
    n_tensors = len(model.layer_tensors())
    h2d = pageable_h2d_s(hw, per_layer)
    cold = 1.0 - np.asarray(cached, dtype=float)
    for seg in (PRE, DEC):
        tb.put(seg, "layer", C.WEIGHT_LOAD, R.H2D, WC, np.full_like(z.b, h2d))
        tb.put(seg, "layer", C.WEIGHT_LOAD, R.H2D, WD, np.full_like(z.b, h2d))
        tb.put(seg, "layer", C.WEIGHT_LOAD, R.DISK_READ, WD, per_layer / z.disk_r)
        tb.put(seg, "layer", C.WEIGHT_LOAD, R.HOST, WD, cold * per_layer / hw.memcpy_bytes_per_s)
        tb.put_lat(seg, "layer", "weight_load.cpu", n_tensors * hw.links.h2d_latency_s)
        tb.put_lat(seg, "layer", "weight_load.disk", n_tensors * hw.links.h2d_latency_s)


def _compute(tb: TermsBuilder, z) -> None:
    """The HF model's eager forward on the GPU: GEMMs (the profile's tables), eager attention
    over the GPU cache, the forward's elementwise kernels; the head with its all-position
    logits in the prefill."""
    model, dev, dtype = z.model, z.hw.device, z.dtype
    b, s = z.b, z.s
    for seg, m in ((PRE, b * s), (DEC, b)):
        tb.put(seg, "layer", C.MATMUL, R.GPU, C0, layer_matmul_time_s(model, dev, m, dtype))
        tb.put(seg, "layer", C.ELEMENTWISE, R.GPU, C0, hf_eager.layer_elementwise_s(model, dev, m, dtype))
    tb.put(PRE, "layer", C.ATTENTION, R.GPU, C0, hf_eager.prefill_attention_s(model, dev, b, s, dtype))
    tb.put(DEC, "layer", C.ATTENTION, R.GPU, C0, hf_eager.decode_attention_s(model, dev, b[:, None],
                                                                           z.ctx[None, :], dtype))
    for seg, tokens in ((PRE, s), (DEC, 1)):
        gemm, other = hf_eager.head_s(model, dev, b, tokens, dtype)
        tb.put(seg, "head", C.MATMUL, R.GPU, C0, gemm)
        tb.put(seg, "head", C.ELEMENTWISE, R.GPU, C0, other)


def _buffers(out: np.ndarray, z) -> None:
    """GPU working memory (see the module docstring): the largest offloaded tensor, scaled
    by the offloaded share as the other engines' streamed buffers are; the prefill's scores
    or all-position logits (the larger); decode's previous-step cache held by ``generate``
    and one step's logits; the hidden states in flight."""
    model, e = z.model, DTYPE_BYTES[z.dtype]
    b, s = z.b, z.prompt_len
    largest = max(t.nbytes(z.dtype) for t in model.layer_tensors())
    for i in (WC, WD):
        out[:, :, GPU, i] += largest
    h, heads = model.hidden_size, model.num_heads
    mlp = model.ffn_dim * (1 if model.is_opt else 3)
    scores = b * heads * float(s) * s * (e + 4)
    logits = hf_eager.head_logits_bytes(model, b, s, z.dtype)
    in_flight = b * s * (4 * h + 2 * model.q_dim + 2 * model.kv_dim + mlp) * e
    out[:, PREFILL, GPU, C0] += np.maximum(scores, logits) + in_flight
    out[:, DECODE, GPU, C0] += (hf_eager.previous_cache_bytes(z) + hf_eager.head_logits_bytes(model, b, 1, z.dtype)
                                + b * (4 * h + mlp) * e)
