"""The decoder math, functional: weights are dicts of tensors keyed by checkpoint names
(without the layer prefix), one function per block kind.

Shapes: ``b`` sequences of a GPU batch, ``t`` new tokens (the prompt length in prefill, 1
in decode), ``h`` hidden, ``nh`` query heads, ``nkv`` key/value heads, ``d`` head_dim,
``f`` ffn_dim, ``V`` vocabulary.

Attention is a callback ``attend(q, k, v) -> o`` supplied by the executor (it owns the KV
cache and its placement): ``q`` (b, t, nh, d), ``k``/``v`` (b, t, nkv, d) -> ``o``
(b, t, nh * d). ``region(component, label)`` wraps each piece of work so the executor can
time it and count its operations; ``simulator.cost``'s ``ELEMENTWISE_KERNELS`` is the
number of non-GEMM, non-attention operations these functions launch per layer.

Tensor parallelism (``validate.executor.distributed``): ``spec`` then describes one rank's
shard (its ``nh``/``nkv`` heads, ``f`` its MLP columns) and ``reduce(y) -> y`` sums the
partial products of the row-parallel projections over the ranks (an all-reduce); their
biases are added once, after it (``row_parallel_sum``). Without ``reduce`` (one device)
the projections keep their fused bias and nothing else changes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from simulator.models import ModelSpec
from simulator.vocabulary import Component
from validate.executor import moe

MM, EW = Component.MATMUL, Component.ELEMENTWISE


def rope_tables(spec: ModelSpec, length: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and signed sin for positions 0..length-1, each (length, d), in ``dtype``.

    Rotary embedding as Hugging Face Llama applies it (rotate-half convention):
    ``x * cos + rotate_half(x) * sin`` with ``rotate_half([x1, x2]) = [-x2, x1]``. With
    ``sin_signed = [-sin, sin]`` that is ``x * cos + roll(x, d/2) * sin_signed``.
    Angles in fp32: ``pos / theta^(2i/d)``.
    """
    d = spec.head_dim
    inv_freq = 1.0 / (spec.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d))  # (d/2,)
    angles = torch.outer(torch.arange(length, dtype=torch.float32), inv_freq)  # (length, d/2)
    cos = torch.cat([angles.cos(), angles.cos()], dim=-1)  # (length, d)
    sin = torch.cat([-angles.sin(), angles.sin()], dim=-1)  # (length, d)
    return cos.to(device=device, dtype=dtype), sin.to(device=device, dtype=dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (b, t, n, d); cos, sin (t, d) -> (b, t, n, d). Three operations."""
    t, d = cos.shape
    cos, sin = cos.view(1, t, 1, d), sin.view(1, t, 1, d)
    return torch.addcmul(x * cos, x.roll(d // 2, dims=-1), sin)


def row_parallel_sum(y: torch.Tensor, bias: torch.Tensor | None, reduce, region) -> torch.Tensor:
    """Sum a row-parallel projection's partial products over the tensor-parallel ranks, then
    add its bias once. y (b, t, h) -> (b, t, h), in place."""
    y = reduce(y)
    if bias is not None:
        with region(MM):
            y += bias
    return y


def opt_layer(spec: ModelSpec, w: dict, x: torch.Tensor, attend, region, reduce=None) -> torch.Tensor:
    """OPT decoder layer (pre-LayerNorm, ReLU MLP, biases everywhere). x (b, t, h) -> (b, t, h)."""
    b, t, h = x.shape
    nh, nkv, d = spec.num_heads, spec.num_kv_heads, spec.head_dim
    with region(EW):
        y = F.layer_norm(x, (h,), w["self_attn_layer_norm.weight"], w["self_attn_layer_norm.bias"],
                         spec.norm_eps)  # (b, t, h)
    with region(MM):
        q = F.linear(y, w["self_attn.q_proj.weight"], w["self_attn.q_proj.bias"]).view(b, t, nh, d)
        k = F.linear(y, w["self_attn.k_proj.weight"], w["self_attn.k_proj.bias"]).view(b, t, nkv, d)
        v = F.linear(y, w["self_attn.v_proj.weight"], w["self_attn.v_proj.bias"]).view(b, t, nkv, d)
    o = attend(q, k, v)  # (b, t, nh * d); the 1/sqrt(d) scaling is inside attention
    with region(MM):
        bias = None if reduce else w["self_attn.out_proj.bias"]  # with reduce: added after the sum
        o = F.linear(o, w["self_attn.out_proj.weight"], bias)  # (b, t, h)
    if reduce:
        o = row_parallel_sum(o, w["self_attn.out_proj.bias"], reduce, region)
    with region(EW):
        o += x  # residual
        y = F.layer_norm(o, (h,), w["final_layer_norm.weight"], w["final_layer_norm.bias"], spec.norm_eps)
    with region(MM):
        y = F.linear(y, w["fc1.weight"], w["fc1.bias"])  # (b, t, f)
    with region(EW):
        y = F.relu_(y)
    with region(MM):
        y = F.linear(y, w["fc2.weight"], None if reduce else w["fc2.bias"])  # (b, t, h) (partial with reduce)
    if reduce:
        y = row_parallel_sum(y, w["fc2.bias"], reduce, region)
    with region(EW):
        y += o  # residual
    return y


def llama_layer(spec: ModelSpec, w: dict, x: torch.Tensor, attend, region, cos, sin, reduce=None,
                experts=None) -> torch.Tensor:
    """Llama-family layer (RMSNorm, rotary, GQA, SwiGLU; qwen2 adds q/k/v biases; mixtral
    replaces the MLP by routed experts, ``validate.executor.moe``).

    x (b, t, h) -> (b, t, h); cos, sin (t, d) for the positions of the t tokens.
    ``experts``: where a mixture of experts' experts are computed (default: from ``w``).
    """
    b, t, h = x.shape
    nh, nkv, d = spec.num_heads, spec.num_kv_heads, spec.head_dim
    with region(EW):
        y = F.rms_norm(x, (h,), w["input_layernorm.weight"], spec.norm_eps)  # (b, t, h)
    with region(MM):
        q = F.linear(y, w["self_attn.q_proj.weight"], w.get("self_attn.q_proj.bias")).view(b, t, nh, d)
        k = F.linear(y, w["self_attn.k_proj.weight"], w.get("self_attn.k_proj.bias")).view(b, t, nkv, d)
        v = F.linear(y, w["self_attn.v_proj.weight"], w.get("self_attn.v_proj.bias")).view(b, t, nkv, d)
    with region(EW):
        q = apply_rope(q, cos, sin)  # (b, t, nh, d)
        k = apply_rope(k, cos, sin)  # (b, t, nkv, d)
    o = attend(q, k, v)  # (b, t, nh * d)
    with region(MM):
        o = F.linear(o, w["self_attn.o_proj.weight"])  # (b, t, h)
    if reduce:
        o = row_parallel_sum(o, None, reduce, region)
    with region(EW):
        o += x  # residual
        y = F.rms_norm(o, (h,), w["post_attention_layernorm.weight"], spec.norm_eps)
    if spec.is_moe:
        y = moe.moe_forward(spec, w[moe.ROUTER], y, region, experts or moe.ResidentExperts(w, region))  # (b, t, h)
    else:
        with region(MM):
            g = F.linear(y, w["mlp.gate_proj.weight"])  # (b, t, f)
            u = F.linear(y, w["mlp.up_proj.weight"])  # (b, t, f)
        with region(EW):
            g = F.silu(g, inplace=True)
            g *= u  # SwiGLU
        with region(MM):
            y = F.linear(g, w["mlp.down_proj.weight"])  # (b, t, h)
    if reduce:
        y = row_parallel_sum(y, None, reduce, region)
    with region(EW):
        y += o  # residual
    return y


def final_norm(spec: ModelSpec, w: dict, x: torch.Tensor) -> torch.Tensor:
    """The norm before the LM head; x (b, h) -> (b, h). ``w`` holds the head vectors by full name."""
    h = x.shape[-1]
    if spec.is_opt:
        return F.layer_norm(x, (h,), w["model.decoder.final_layer_norm.weight"],
                            w["model.decoder.final_layer_norm.bias"], spec.norm_eps)
    return F.rms_norm(x, (h,), w["model.norm.weight"], spec.norm_eps)


def prefill_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal attention over the prompt itself, fused (scores never materialised).

    q (b, s, nh, d), k/v (b, s, nkv, d) -> (b, s, nh * d).
    """
    b, s, nh, d = q.shape
    gqa = nh != k.shape[2]
    o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                       is_causal=True, enable_gqa=gqa)  # (b, nh, s, d)
    return o.transpose(1, 2).reshape(b, s, nh * d)


def decode_attention_rows(q_rows: torch.Tensor, k_rows: torch.Tensor, v_rows: torch.Tensor) -> torch.Tensor:
    """One query token per (sequence, kv head) row over that row's cached keys.

    q_rows (r, g, 1, d) (the g query heads sharing the row's kv head), k_rows/v_rows
    (r, L, d) (any strides with a contiguous last dim) -> (r, g, 1, d).
    """
    k4, v4 = k_rows.unsqueeze(1), v_rows.unsqueeze(1)  # (r, 1, L, d)
    return F.scaled_dot_product_attention(q_rows, k4, v4, enable_gqa=q_rows.shape[1] > 1)
