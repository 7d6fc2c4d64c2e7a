"""``zero-inference``: DeepSpeed ZeRO-Inference - ZeRO stage 3 parameter offload with
prefetch around an unmodified Hugging Face model - as microsoft/DeepSpeedExamples
``inference/huggingface/zero_inference`` runs it (``run_model.py``, ``utils.py``,
``model-support.md``, ``run_*_a6000.sh`` at 83757d9; the 2023 refresh, DeepSpeed >= 0.10.3).
Read from microsoft/DeepSpeed v0.10.3 (04a6fed): ``runtime/zero/partitioned_param_coordinator.py``,
``runtime/zero/partition_parameters.py``, ``runtime/swap_tensor/partitioned_param_swapper.py``,
``inference/quantization/{layers,utils}.py``, ``csrc/quantization/quantize_int4.cu``; and the
KV-offload fork of transformers (tjruwase/transformers@35515d7, branch kvcache-offload-cpu:
``models/{opt,llama}/modeling_*.py``). Facts, not code. One GPU; data-parallel replicas are
independent processes.

Schedule
--------
One batch through all layers per forward (``num_gpu_batches`` 1); ``generate`` runs the
prefill and ``gen_len - 1`` decode forwards. Before each module with parameters the
coordinator (``fetch_sub_module``) issues the copy of its parameters on a side stream
(``all_gather_coalesced``; with one rank ``param.ds_tensor.to(device, non_blocking=True)``),
blocks the host until they are in, then prefetches the next parameters of the recorded trace
up to ``stage3_prefetch_bucket_size`` elements while ``stage3_max_live_parameters`` allows;
the host runs ahead of the GPU's kernels, so the next module's copy runs while the current
module computes. Per layer the copies and the compute overlap: a layer costs the slowest of
its channels (``terms``: h2d, disk, and the serial compute chain), with:

* **pinned weights** (``pin_memory=True``, ``--pin-memory 1``): DMA at the pinned rate;
  **pageable** (the default, ``--pin-memory 0``): the same copy from ordinary memory holds
  the host thread for its whole duration (``common.pageable_h2d_s``), so it joins the host
  channel too, serial with the CPU attention the host also runs.
* **NVMe** (``offload_param.device = nvme``): the swapper reads parameter partitions with
  DeepSpeed's async I/O (libaio, O_DIRECT - the page cache is never used) into pinned swap
  buffers (``buffer_count`` 5) and prefetches the partitions after those in flight; the disk,
  the pinned DMA and the compute form a pipeline (disk channel at the disk's O_DIRECT rate).
* Parameters of at most ``stage3_param_persistence_threshold`` elements (biases, norms)
  stay on the GPU; every matrix, embedding included, is fetched every forward (the tied OPT
  embedding twice: for the input and for the LM head, their uses farther apart than
  ``max_reuse_distance``).

4-bit weights (``--quant_bits 4``, ``weight_quantization.quantized_initialization``,
``group_size`` 64, ``group_dim`` 1, asymmetric): every ``nn.Linear`` and ``nn.Embedding``
weight is stored as packed uint4 + fp16 scale + fp16 min (36 bytes per 64 values, the
layout of ``simulator.compression``), moved packed, and **dequantized in every forward that
uses it** (``QuantizedLinear.forward``, the wrapped ``F.linear`` / ``F.embedding``): for fp16
one CUDA kernel per tensor (``dequantize_int4_to_half_experimental``: reads the packed
bytes, writes fp16), else a torch fallback of about seven passes (``DEQUANT_FALLBACK``).
An embedding is dequantized whole for every lookup.

KV offload (``--kv-offload``, cache wholly on the CPU; attention then runs on the CPU)
-------------------------------------------------------------------------------------
* The CPU cache is ``torch.empty(layers, 2, b, kv_heads, s + n - 1, head_dim)`` without a
  dtype: **fp32**, pageable unless ``--pin_kv_cache``; allocated in the prefill.
* Prefill: each layer's K and V are copied out with a blocking ``copy_`` on a side stream
  into the fp32 buffer (a pageable D2H of fp16 data, then the host's fp16 -> fp32
  conversion): serial with the layer's compute (the host waits).
* Decode: the new token's K/V are copied into the buffer (blocking); the query goes to the
  host as fp32, attention runs there in fp32 over the **whole allocated length**
  ``s + n - 1`` every step (``bmm``, mask add, ``max``, softmax, ``bmm``; Llama first expands
  the grouped KV heads with ``repeat_kv``, a copy ``heads / kv_heads`` times the cache), and
  the output returns to the GPU. The host does all of it: CPU attention joins the compute
  chain and the host channel, and every GPU<->CPU copy of the cache path is blocking
  (``channels``: D2H joins the compute chain).

The model's own kernels are transformers' eager ones (``simulator.engines.hf_eager``).
Buffers: the module in flight plus the prefetch bucket (stored format), one dequantized
matrix, the prefill's eager scores or all-position logits; with the cache on the GPU, in
decode, the previous step's whole cache that ``generate`` holds while the forward builds the new one
(``hf_eager.previous_cache_bytes``); with KV offload the fp32 CPU cache (twice the resident
fp16 share); on NVMe the pinned swap buffers.
"""

from __future__ import annotations

import numpy as np

from simulator.compression import packed_bytes
from simulator.engines import hf_eager
from simulator.engines.base import Engine, EngineConstant, register
from simulator.engines.common import finish, pageable_d2h_s, pageable_h2d_s, shape_of
from simulator.errors import PolicyError
from simulator.memory import CPU, DECODE, GPU, PREFILL
from simulator.models import DTYPE_BYTES
from simulator.ops import layer_matmul_time_s
from simulator.terms import (C0, CC, CG, CH, RES, WC, WD, Component, Resource, TermsBuilder, channel_matrix)

C, R = Component, Resource
PRE, DEC = TermsBuilder.PRE, TermsBuilder.DEC
SCOPES = ("layer", "head")
ENGINE_FLAG = "--engine zero-inference"
EXAMPLES = "microsoft/DeepSpeedExamples@83757d9 inference/huggingface/zero_inference"
DS = "microsoft/DeepSpeed@v0.10.3 (04a6fed)"
FORK = "tjruwase/transformers@35515d7 (kvcache-offload-cpu)"

PREFETCH_BUCKET = EngineConstant(
    "stage3_prefetch_bucket_size", 2.0, "x hidden_size^2 elements",
    f"{EXAMPLES}/run_model.py get_ds_model: stage3_prefetch_bucket_size = 2 * hidden_size * hidden_size "
    "(stage3_max_live_parameters the same); the coordinator prefetches up to this many elements after the "
    f"current module ({DS} partitioned_param_coordinator.py fetch_sub_module).")
NVME_BUFFERS = EngineConstant(
    "nvme_buffer_count_x_size", 5 * 2 ** 31, "elements of pinned swap buffer",
    f"{EXAMPLES}/run_model.py: offload_param nvme buffer_count 5, buffer_size 2 GB (elements) for OPT/Llama; "
    f"aio block 16 MiB, queue depth 64, 8 threads; {DS} partitioned_param_swapper.py pins them.")
DEQUANT_FALLBACK = EngineConstant(
    "dequant_fallback_bytes_per_element", 15.0, "bytes moved per element (non-fp16 models)",
    f"{DS} inference/quantization/utils.py DeQuantizer: without the fp16 CUDA kernel, unpack (two shifts "
    "into strided uint8 halves: ~2 bytes) then zeros_like, copy_, div_, add_ in the model dtype "
    "(2 + 3 + 4 + 4 bytes at 2-byte elements) - seven kernels per tensor.")
FALLBACK_KERNELS = 7
FIRST_TOUCH = EngineConstant(
    "first_touch_write_passes", 1.0, "extra write passes over freshly allocated host memory",
    "torch's CPU allocator takes large blocks from glibc (posix_memalign above the mmap threshold: fresh "
    "anonymous pages, returned with munmap on free), and the kernel zero-fills each page at its first write: "
    f"one more write pass at the host's memory rate. Where it applies ({FORK}): Llama's repeat_kv copy of the "
    "fp32 cache (a new tensor per layer and step); OPT's fp32 cache buffer, deleted and re-allocated by every "
    "prefill (modeling_opt.py OPTDecoder.forward), whose pages the prefill's stores touch first. Page-fault "
    "handling beyond the zero-fill is not a rate of the profile and is not modelled.")
CPU_ATTENTION_OPS = 10  # float + to('cpu'), mask to('cpu'), bmm, add, max, softmax, to(half), bmm, to(device)
CPU_SCORE_BYTES = 32  # fp32 scores on the host: bmm write, add r+w, max r+w, softmax r+w, bmm read


def _whole(p) -> str | None:
    """The single tier that holds all of a placement, or None."""
    for tier, v in zip(("gpu", "cpu", "disk"), p.as_tuple()):
        if v >= 1.0 - 1e-9:
            return tier
    return None


@register
class ZeroInferenceEngine(Engine):
    name = "zero-inference"
    title = "DeepSpeed ZeRO-Inference (ZeRO-3 weight streaming, optional 4-bit weights and KV offload)"
    source = f"{EXAMPLES}; {DS}; {FORK}"
    constants = (PREFETCH_BUCKET, NVME_BUFFERS, DEQUANT_FALLBACK, FIRST_TOUCH)
    options = {"pin_memory": False}
    tiers = {"weights": ("gpu", "cpu", "disk"), "cache": ("gpu", "cpu"), "activations": ("gpu",)}

    def __init__(self, pin_memory: bool = False):
        self.pin_memory = bool(pin_memory)

    def check(self, model, hw, policy) -> None:
        if _whole(policy.weights) is None:
            raise PolicyError(f"{ENGINE_FLAG}: --weights {policy.weights.to_percent_text()}: ZeRO-Inference "
                              "places all weights on one tier (offload_param device cpu or nvme; partial "
                              "offload is work in progress); allowed: 100,0,0 / 0,100,0 / 0,0,100")
        cache = _whole(policy.cache)
        if cache not in ("gpu", "cpu"):
            raise PolicyError(f"{ENGINE_FLAG}: --cache {policy.cache.to_percent_text()}: the KV cache is wholly "
                              "on the GPU or, with --kv-offload, wholly on the CPU; allowed: 100,0,0 / 0,100,0")
        if cache == "cpu" and not (model.is_opt or model.family == "llama"):
            raise PolicyError(f"{ENGINE_FLAG}: --cache {policy.cache.to_percent_text()}: KV offload exists for "
                              f"OPT, Llama and BLOOM only (the transformers fork); {model.name} is {model.family}")
        if _whole(policy.activations) != "gpu":
            raise PolicyError(f"{ENGINE_FLAG}: --activations {policy.activations.to_percent_text()}: the hidden "
                              "states stay on the GPU; allowed: 100,0,0")
        if policy.num_gpu_batches != 1:
            raise PolicyError(f"{ENGINE_FLAG}: --num-gpu-batches {policy.num_gpu_batches}: one batch goes "
                              "through all layers per forward; allowed: 1")
        if policy.compress_cache:
            raise PolicyError(f"{ENGINE_FLAG}: --compress-cache: ZeRO-Inference quantizes weights only (KV "
                              "cache quantization is work in progress)")
        if policy.cpu_attention and cache != "cpu":
            raise PolicyError(f"{ENGINE_FLAG}: --cpu-attention with --cache {policy.cache.to_percent_text()}: "
                              "attention runs on the CPU only with the KV cache offloaded there")
        if policy.disk_io != "direct" and _whole(policy.weights) == "disk":
            raise PolicyError(f"{ENGINE_FLAG}: --disk-io {policy.disk_io}: the NVMe swapper reads with O_DIRECT "
                              "async I/O, never through the page cache; allowed: direct")
        if policy.tp > 1 or policy.pp > 1:
            raise PolicyError(f"{ENGINE_FLAG}: tp {policy.tp} x pp {policy.pp}: the model is of the single-GPU "
                              "run_model.py; use dp replicas or another engine")

    def realize(self, model, policy):
        """KV offload always attends on the CPU; the coordinator always prefetches."""
        changes = {}
        on_cpu = _whole(policy.cache) == "cpu"
        if policy.cpu_attention != on_cpu:
            changes["cpu_attention"] = on_cpu
        if not policy.overlap:
            changes["overlap"] = True
        return policy.with_(**changes) if changes else policy

    searcher = "enumerate"

    def search_space(self, space):
        from dataclasses import replace
        return replace(space, num_gpu_batches=(1,), compress_cache=(False,))

    def candidate_policies(self, model, hw, workload, space, gpus: int = 1) -> list:
        """Its planner's choices (run_model.py's flags): the tier holding all weights (GPU, CPU
        or NVMe), 4-bit weights or not, the KV cache on the GPU or offloaded (attention then on
        the CPU), and the batch size."""
        from simulator.policy import Placement, Policy
        G, C, D = Placement(1, 0, 0), Placement(0, 1, 0), Placement(0, 0, 1)
        kv = (G, C) if (model.is_opt or model.family == "llama") else (G,)
        return [Policy(gpu_batch_size=b, weights=w, cache=c, cpu_attention=c is C, compress_weights=q, dtype=dtype,
                       dp=gpus)
                for dtype in space.dtypes_for(model, hw) for b in space.gpu_batch_sizes for w in (G, C, D)
                for c in kv for q in space.compress_weights]

    def build_terms(self, model, hw, workload, shape, dtype, tp=1, pp=1, dp=1):
        z = shape_of(model, hw, workload, shape, dtype, tp, pp, dp)
        tb = TermsBuilder(len(shape), z.num_segments, SCOPES)
        _weights(tb, z, self.pin_memory)
        _compute(tb, z)
        _kv_offload(tb, z)
        mult = np.tile(np.array([z.rv.layers, 1.0]), (len(shape), 1))
        return finish(tb, z, workload, shape, mult, channels(hw), self.name, _buffers)


def channels(hw) -> np.ndarray:
    """The standard channels with the host thread as a channel of its own; every D2H copy
    of this engine is blocking (``.to('cpu')``, ``copy_`` without ``non_blocking``), so D2H
    time joins the compute chain and the host channel."""
    links = hw.links
    ch = channel_matrix(links.h2d_bytes_per_s, links.d2h_bytes_per_s, links.duplex_bytes_per_s,
                        hw.device_is_host and not hw.host_copies_overlap, host_channel=True)
    ch[CH["compute"], RES[R.D2H]] = 1.0
    ch[CH["host"], RES[R.D2H]] = 1.0
    return ch


def _matrices(model, layer: bool = True):
    ts = model.layer_tensors() if layer else model.head_tensors()
    return [t for t in ts if t.is_matrix]


def _fetched(model, stored: str):
    """(bytes per layer, tensors per layer, head bytes) fetched per forward in the stored
    format: parameters above the persistence threshold (hidden_size elements) - the
    matrices and any larger bias; the head's matrices, OPT's tied embedding twice."""
    h = model.hidden_size
    big = [t for t in model.layer_tensors() if t.is_matrix or t.numel > h]
    per_layer = sum(t.nbytes(stored) for t in big)
    head = sum(t.nbytes(stored) for t in _matrices(model, layer=False))
    if model.tie_word_embeddings:
        head += model.lm_head_tensor().nbytes(stored)
    return per_layer, len(big), head


def _weights(tb: TermsBuilder, z, pinned: bool) -> None:
    """Each forward moves every fetched parameter once: from pinned memory by DMA, from
    pageable memory holding the host, from NVMe through the pinned swap buffers (disk read
    at the O_DIRECT rate, then the pinned DMA)."""
    hw, model = z.hw, z.model
    h2d = hw.links.h2d_bytes_per_s
    stored = np.where(z.cw > 0, 1.0, 0.0)
    q_layer, n_t, q_head = _fetched(model, "int4")
    f_layer, _, f_head = _fetched(model, z.dtype)
    for scope, q, f in (("layer", q_layer, f_layer), ("head", q_head, f_head)):
        nbytes = stored * q + (1 - stored) * f
        if pinned:
            cpu_link, cpu_host = nbytes / h2d, 0.0 * nbytes
        else:
            cpu_link = cpu_host = pageable_h2d_s(hw, nbytes)
        n = n_t if scope == "layer" else 3
        for seg in (PRE, DEC):
            tb.put(seg, scope, C.WEIGHT_LOAD, R.H2D, WC, cpu_link)
            tb.put(seg, scope, C.WEIGHT_LOAD, R.HOST, WC, cpu_host)
            tb.put(seg, scope, C.WEIGHT_LOAD, R.H2D, WD, nbytes / h2d)
            tb.put(seg, scope, C.WEIGHT_LOAD, R.DISK_READ, WD, nbytes / z.disk_r)
            tb.put_lat(seg, scope, "weight_load.cpu", n * hw.links.h2d_latency_s)
            tb.put_lat(seg, scope, "weight_load.disk", n * hw.links.h2d_latency_s)


def _dequant_s(z, tensors) -> np.ndarray:
    """Dequantizing ``tensors`` once (4-bit weights only): the fp16 CUDA kernel reads the
    packed bytes and writes fp16, one launch per tensor; other dtypes take the torch fallback
    (``DEQUANT_FALLBACK``). Unit: s."""
    dev = z.hw.device
    n = sum(t.numel for t in tensors)
    packed = sum(packed_bytes(*t.shape) for t in tensors)
    if z.dtype == "fp16":
        t = dev.stream_time_s(packed + 2.0 * n, len(tensors))
    else:
        t = dev.stream_time_s(DEQUANT_FALLBACK.value * n, FALLBACK_KERNELS * len(tensors))
    return z.cw * t


def _compute(tb: TermsBuilder, z) -> None:
    """The HF model's eager forward on the GPU (GEMMs, attention over a GPU cache,
    elementwise kernels, the head with all-position logits) and the dequantization of every
    4-bit tensor each forward; decode attention on the GPU only when the cache is there."""
    model, dev, dtype = z.model, z.hw.device, z.dtype
    b, s = z.b, z.s
    deq_layer = _dequant_s(z, _matrices(model))
    head_mats = _matrices(model, layer=False) + ([model.lm_head_tensor()] if model.tie_word_embeddings else [])
    deq_head = _dequant_s(z, head_mats)
    for seg, m, tokens in ((PRE, b * s, s), (DEC, b, 1)):
        tb.put(seg, "layer", C.MATMUL, R.GPU, C0, layer_matmul_time_s(model, dev, m, dtype))
        tb.put(seg, "layer", C.ELEMENTWISE, R.GPU, C0, hf_eager.layer_elementwise_s(model, dev, m, dtype))
        tb.put(seg, "layer", C.COMPRESSION, R.GPU, C0, deq_layer)
        gemm, other = hf_eager.head_s(model, dev, b, tokens, dtype)
        tb.put(seg, "head", C.MATMUL, R.GPU, C0, gemm)
        tb.put(seg, "head", C.ELEMENTWISE, R.GPU, C0, other)
        tb.put(seg, "head", C.COMPRESSION, R.GPU, C0, deq_head)
    tb.put(PRE, "layer", C.ATTENTION, R.GPU, C0, hf_eager.prefill_attention_s(model, dev, b, s, dtype))
    tb.put(DEC, "layer", C.ATTENTION, R.GPU, CG, hf_eager.decode_attention_s(model, dev, b[:, None],
                                                                           z.ctx[None, :], dtype))


def cpu_attention_s(z):
    """Decode attention on the host over the fp32 cache at its whole allocated length
    ``s + n - 1``: the (expanded, for grouped KV heads) K and V read by the two bmms at the
    CPU's attention rate, ``repeat_kv``'s copy, the fp32 score passes, and the host ops.
    Unit: s, per layer (shape (P,))."""
    model, cpu = z.model, z.hw.cpu
    b = z.b
    L = float(z.s + z.n - 1)
    kv32 = b * L * model.kv_bytes_per_token("fp32")
    g = hf_eager.gqa_group(model)
    flop = 4.0 * b * L * model.q_dim
    read = cpu.attention_read_time_s(kv32 * g, flop, "fp32")
    expand = cpu.stream_time_s(kv32 * (1 + g + FIRST_TOUCH.value * g), 2) if g > 1 else 0.0
    scores = cpu.stream_time_s(b * model.num_heads * L * (CPU_SCORE_BYTES - 8), 0)
    return read + expand + scores + CPU_ATTENTION_OPS * cpu.launch_s


def _store_s(z, tokens, first_touch: bool = False):
    """A blocking copy of ``tokens`` tokens' K and V of one layer into the fp32 host cache:
    pageable D2H of the fp16 values, then the host's conversion (read 2, write 4 bytes per
    element); ``first_touch``: the prefill of OPT's freshly allocated buffer also zero-fills
    the buffer's pages (its whole allocated length, ``FIRST_TOUCH``). Unit: s."""
    elems = z.b * tokens * 2 * z.model.kv_dim
    e = DTYPE_BYTES[z.dtype]
    fill = FIRST_TOUCH.value * z.b * (z.s + z.n - 1) * 2 * z.model.kv_dim * 4 if first_touch else 0.0
    return pageable_d2h_s(z.hw, elems * e) + z.hw.cpu.stream_time_s(elems * (e + 4) + fill, 1)


def _kv_offload(tb: TermsBuilder, z) -> None:
    """With the cache on the CPU (coefficients on c_c): the prefill's blocking K/V stores;
    per decode step the new token's store, the fp32 query out, the mask out, CPU attention
    and the output back."""
    hw, model = z.hw, z.model
    b = z.b
    L = float(z.s + z.n - 1)
    tb.put(PRE, "layer", C.CACHE_STORE, R.D2H, CC, _store_s(z, z.s, first_touch=model.is_opt))
    tb.put_lat(PRE, "layer", "cache_store.cpu", 2 * hw.links.d2h_latency_s)
    tb.put(DEC, "layer", C.CACHE_STORE, R.D2H, CC, _store_s(z, 1))
    tb.put_lat(DEC, "layer", "cache_store.cpu", 2 * hw.links.d2h_latency_s)
    q_out = b * model.q_dim * 4 + b * L * DTYPE_BYTES[z.dtype]  # fp32 query, the mask row
    back = b * model.q_dim * (DTYPE_BYTES[z.dtype] if model.is_opt else 4)
    tb.put(DEC, "layer", C.ATTENTION_IO, R.D2H, CC, pageable_d2h_s(hw, q_out))
    tb.put(DEC, "layer", C.ATTENTION_IO, R.H2D, CC, pageable_h2d_s(hw, back))
    tb.put_lat(DEC, "layer", "attention_io.d2h", 2 * hw.links.d2h_latency_s)
    tb.put_lat(DEC, "layer", "attention_io.h2d", hw.links.h2d_latency_s)
    tb.put(DEC, "layer", C.ATTENTION, R.CPU, CC, cpu_attention_s(z))


def _buffers(out: np.ndarray, z) -> None:
    """GPU: the module in flight and the prefetch bucket in the stored format (on the
    offloaded tiers), one dequantized matrix; the prefill's scores or all-position logits
    (the larger) and the hidden states in flight; in decode the previous step's cache that
    ``generate`` holds (with the cache on the GPU) and the logits. CPU: with KV offload the
    fp32 cache holds twice the resident fp16 share; on NVMe the pinned swap buffers."""
    model, e = z.model, DTYPE_BYTES[z.dtype]
    b, s = z.b, z.prompt_len
    h = model.hidden_size
    cw = z.compress_weights
    largest = max(t.numel for t in _matrices(model))
    bucket = PREFETCH_BUCKET.value * h * h
    stored_per_elem = np.where(cw > 0, 0.5625, float(e))
    for i in (WC, WD):
        out[:, :, GPU, i] += (largest + bucket) * stored_per_elem[:, None]
    out[:, :, GPU, C0] += (cw * largest * 2.0)[:, None]
    mlp = model.ffn_dim * (1 if model.is_opt else 3)
    scores = b * model.num_heads * float(s) * s * (e + 4)
    logits = hf_eager.head_logits_bytes(model, b, s, z.dtype)
    in_flight = b * s * (4 * h + 2 * model.q_dim + 2 * model.kv_dim + mlp) * e
    out[:, PREFILL, GPU, C0] += np.maximum(scores, logits) + in_flight
    out[:, DECODE, GPU, CG] += hf_eager.previous_cache_bytes(z)
    out[:, DECODE, GPU, C0] += hf_eager.head_logits_bytes(model, b, 1, z.dtype) + b * (4 * h + mlp) * e
    fp32_extra = (4.0 / e - 1.0) * b * z.ctx_max * model.kv_bytes_per_token(z.dtype) * z.layers
    out[:, :, CPU, CC] += fp32_extra[:, None]
    out[:, :, CPU, WD] += NVME_BUFFERS.value * e
