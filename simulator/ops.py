"""The cost of one operation on one machine, independent of the engine that runs it: the
GEMMs of a layer, attention over a prompt or a KV cache, the elementwise work of a layer,
and the bytes one tensor-parallel rank holds. Every engine (``simulator.engines``) and the
serving simulator build their schedules from these; what an engine does differently (extra
copies, unfused kernels, kernels per layer, its own rates) it adds on top, in its module.

Every rate comes from the hardware profile through ``ComputeDevice`` (measured tables where
the profile has them, else a roofline on its measured peaks). Units: bytes, seconds, FLOP.
"""

from __future__ import annotations

import numpy as np

from simulator.hardware import ComputeDevice
from simulator.models import DTYPE_BYTES, ModelSpec
from simulator.moe import expected_expert_time_s, experts_touched  # noqa: F401  (the one place of the formula)

CPU_ATTENTION_DTYPE = "fp32"  # attention on the CPU upcasts the cache it reads (llmsim's executor and FlexGen)


# ------------------------------------------------------------------ shapes and bytes
def layer_gemms(model: ModelSpec) -> list[tuple[int, int, int]]:
    """Dense GEMMs of one layer as (k, n, count), excluding MoE experts (the shapes the
    profiler measures)."""
    return [(k, n, c) for k, n, c, _ in layer_gemm_splits(model)]


def layer_gemm_splits(model: ModelSpec) -> list[tuple[int, int, int, str]]:
    """Dense GEMMs of one layer as (k, n, count, split), excluding MoE experts.

    ``split`` is how tensor parallelism cuts the weight (Megatron-LM, arXiv 1909.08053,
    section 3): ``col`` = column-parallel (output features / tp: q, k, v, fc1, gate, up),
    ``row`` = row-parallel (input features / tp: out, fc2, down), ``rep`` = replicated
    (the MoE router).

    MLA (DeepSeek-V2, arXiv 2405.04434, section 2.1; split as vLLM's DeepseekV2 runs it):
    the down-projections q_a (h -> q_lora_rank) and kv_a (h -> kv_lora_rank + rope)
    replicated, q_b (or q_proj) and kv_b column-parallel, o_proj row-parallel. Shared experts
    (Qwen-MoE, DeepSeek): a SwiGLU MLP of ``shared_expert_dim``, and Qwen-MoE's (h -> 1) gate."""
    h, f = model.hidden_size, model.ffn_dim
    if model.is_mla:
        out = _mla_gemms(model)
    else:
        out = [(h, model.q_dim, 1, "col"), (h, model.kv_dim, 2, "col"), (model.q_dim, h, 1, "row")]
    if model.is_moe:
        out.append((h, model.num_experts, 1, "rep"))
        if model.shared_expert_dim:
            fs = model.shared_expert_dim
            out += [(h, fs, 2, "col"), (fs, h, 1, "row")]
            if model.shared_expert_gate:
                out.append((h, 1, 1, "rep"))
    elif model.is_opt:
        out += [(h, f, 1, "col"), (f, h, 1, "row")]
    else:
        out += [(h, f, 2, "col"), (f, h, 1, "row")]
    return out


def _mla_gemms(model: ModelSpec) -> list[tuple[int, int, int, str]]:
    h, nh, r = model.hidden_size, model.num_heads, model.qk_rope_head_dim
    nope, v, lat = model.head_dim - r, model.v_head_dim, model.kv_lora_rank
    q = [(h, model.q_lora_rank, 1, "rep"), (model.q_lora_rank, model.q_dim, 1, "col")] if model.q_lora_rank \
        else [(h, model.q_dim, 1, "col")]
    return q + [(h, lat + r, 1, "rep"), (lat, nh * (nope + v), 1, "col"), (nh * v, h, 1, "row")]


def split_gemm(k: int, n: int, split: str, tp: int) -> tuple[int, int]:
    """A GEMM's (k, n) on one of tp ranks."""
    if split == "col":
        return k, -(-n // tp)
    if split == "row":
        return -(-k // tp), n
    return k, n


def kv_share(model: ModelSpec, tp: int) -> float:
    """Share of the KV heads one tensor-parallel rank holds: ceil(kv_heads / tp) / kv_heads
    (KV heads are replicated when tp exceeds them, as in GQA models with 8 KV heads)."""
    return -(-model.num_kv_heads // tp) / model.num_kv_heads


def rank_bytes(tensors, fmt: str, tp: int, kv_frac: float | None = None) -> float:
    """Bytes of ``tensors`` on one tensor-parallel rank: matrices split tp ways - except
    the K and V projections, of which a rank holds its ``kv_frac`` (= kv_share: replicated
    when tp exceeds the KV heads) - vectors (norms, biases) replicated. Unit: bytes."""
    kv_frac = 1.0 / tp if kv_frac is None else kv_frac

    def share(t) -> float:
        if not t.is_matrix:
            return 1.0
        return kv_frac if ("k_proj" in t.name or "v_proj" in t.name) else 1.0 / tp

    return sum(t.nbytes(fmt) * share(t) for t in tensors)


# ------------------------------------------------------------------ compute
def layer_matmul_time_s(model: ModelSpec, dev: ComputeDevice, m, dtype: str, tp: int = 1, staged: bool = False,
                        ep=1):
    """GEMM time of one layer on one tensor-parallel rank for one GPU batch of ``m`` tokens
    (m may be an array); ``staged``: its weights were just copied into the staging buffer
    (``ComputeDevice.matmul_time_s``). Unit: s.

    MoE: a batch of m tokens routed to k of E experts touches on average
    ``E_act = E (1 - (1 - k/E)^m)`` experts, each with ``m k / E_act`` tokens on average;
    every touched expert runs its three GEMMs (gate, up, down), split like a dense MLP
    (``experts_matmul_time_s``; ``ep``: expert-parallel degree, ``simulator.moe``).
    """
    e = DTYPE_BYTES[dtype]
    m = np.asarray(m, dtype=float)
    t = sum(cnt * dev.matmul_time_s(m, *split_gemm(k, n, sp, tp), dtype, e, staged)
            for k, n, cnt, sp in layer_gemm_splits(model))
    if model.is_moe:  # a layer of experts outgrows what a staged measurement holds: resident rates
        t = t + experts_matmul_time_s(model, dev, m, dtype, tp, False, ep)
    return t


def experts_matmul_time_s(model: ModelSpec, dev: ComputeDevice, m, dtype: str, tp: int = 1, staged: bool = False,
                          ep=1):
    """Expected GEMM time of one GPU's routed experts for a GPU batch of m tokens: each
    touched expert's three GEMMs (gate and up column-parallel, down row-parallel) on the
    tokens routed to it, in expectation over how many that is
    (``simulator.moe.expected_expert_time_s``). ``dev`` may be the CPU (experts computed
    there). Unit: s."""
    e = DTYPE_BYTES[dtype]
    h, f = model.hidden_size, model.ffn_dim

    def one_expert(n):
        return (2 * dev.matmul_time_s(n, *split_gemm(h, f, "col", tp), dtype, e, staged)
                + dev.matmul_time_s(n, *split_gemm(f, h, "row", tp), dtype, e, staged))

    return expected_expert_time_s(model, m, ep, one_expert)


def layer_elementwise_bytes(model: ModelSpec, m, dtype: str, tp: int = 1):
    """Bytes read + written per layer by the norms, activation, residual adds, rotary
    embedding and cache writes for m tokens on one tensor-parallel rank.

    Per token (x dtype bytes): two norms 2h each and two residual adds 3h each (full width
    on every rank); per rank (/ tp): the MLP activation 2 x ffn (SwiGLU: silu and multiply,
    5 x ffn), rotary 3 x (q_dim + kv_dim) (llama family) and the K/V cache writes 4 x
    kv_dim; MoE adds the gather and scatter-add of routed tokens, 4 h k, and a shared
    expert's activation 5 x shared_expert_dim / tp. Unit: bytes."""
    e = DTYPE_BYTES[dtype]
    h, f = model.hidden_size, model.ffn_dim
    m = np.asarray(m, dtype=float)
    split = 4 * model.kv_dim * kv_share(model, 1)
    if model.is_opt:
        split += 2 * f
    else:
        split += 3 * (model.q_dim + model.kv_dim)
        split += 5 * f * (model.experts_per_token if model.is_moe else 1)
    per_token = 10 * h + split / tp
    if model.is_moe:
        per_token += 4 * h * model.experts_per_token
        if model.shared_expert_dim:
            per_token += 5 * model.shared_expert_dim / tp
    return m * per_token * e


def layer_elementwise_time_s(model: ModelSpec, dev: ComputeDevice, m, dtype: str, tp: int = 1, kernels=0):
    """``layer_elementwise_bytes`` streamed at the device's rate, plus ``kernels`` launches
    (how many an engine issues for this work is the engine's: ``simulator.engines``). Unit: s."""
    return dev.stream_time_s(layer_elementwise_bytes(model, m, dtype, tp), kernels)


def prefill_attention_time_s(model: ModelSpec, dev: ComputeDevice, b, s: int, dtype: str, tp: int = 1):
    """Fused causal attention over a prompt of s tokens for b sequences, one kernel, on one
    tensor-parallel rank (num_heads / tp heads).

    FLOP ``2 b s (s+1) q_dim / tp`` (``ModelSpec.layer_flop_prefill``); bytes read q, k, v
    and written o: ``b s (2 q_dim / tp + 2 kv_dim x kv_share) x dtype bytes``; the device's
    measured prefill-attention curve or roofline (``prefill_attention_compute_s``), plus the
    launch. Unit: s.
    """
    b = np.asarray(b, dtype=float)
    flop = 2.0 * b * s * (s + 1) * model.q_dim / tp
    nbytes = b * s * (2 * model.q_dim / tp + 2 * model.kv_dim * kv_share(model, tp)) * DTYPE_BYTES[dtype]
    return dev.prefill_attention_compute_s(flop, nbytes, dtype) + dev.launch_s


def decode_attention_time_s(model: ModelSpec, dev: ComputeDevice, b, context, dtype: str, ops: int = 1,
                            compute_dtype: str | None = None, tp: int = 1, read_share: float = 1.0):
    """Attention of one new token per sequence over ``context`` keys for b sequences, on one
    tensor-parallel rank.

    Reads ``b x context x kv_bytes_per_token x kv_share`` of K and V stored in ``dtype``
    and does ``4 b context q_dim / tp`` FLOP (MLA: ``mla_decode_flop_per_key``) at the ``compute_dtype`` rate (default: dtype);
    time from the device's decode-attention curve or roofline, plus ``ops`` launches.
    ``read_share``: the share of that read rate the engine's kernel reaches (engine data;
    the K/V bytes are read as if ``1 / read_share`` times as many). Unit: s.
    """
    b = np.asarray(b, dtype=float)
    kv = b * context * model.kv_bytes_per_token(dtype) * kv_share(model, tp) / read_share
    flop = 4.0 * b * context * model.q_dim / tp
    if model.is_mla:
        flop = b * context * mla_decode_flop_per_key(model) / tp
    return dev.attention_read_time_s(kv, flop, compute_dtype or dtype, storage_dtype=dtype) + ops * dev.launch_s


def mla_decode_flop_per_key(model: ModelSpec) -> float:
    """MLA decode attention over the cached latent with the up-projections absorbed
    (DeepSeek-V2, arXiv 2405.04434, section 2.1.2): per head and cached token, scores over
    the latent and the rotary key, ``2 (kv_lora_rank + qk_rope_head_dim)``, and the output
    over the latent, ``2 kv_lora_rank``. Unit: FLOP per key, all heads."""
    return 2.0 * model.num_heads * (2 * model.kv_lora_rank + model.qk_rope_head_dim)
