"""The Hugging Face ``transformers`` model's own eager kernels, as the two engines that run
an unmodified HF model execute them (``accelerate``: HF Accelerate's ``device_map``;
``zero-inference``: DeepSpeed ZeRO-3 around the HF model). Facts read from
huggingface/transformers ``models/opt/modeling_opt.py`` (v4.24.0, the version of FlexGen's HF
baseline, FMInference/FlexLLMGen@004ffef benchmark/third_party/README.md) and
``models/{opt,llama}/modeling_*.py`` of tjruwase/transformers@35515d7 (4.33.0.dev0, branch
kvcache-offload-cpu, the fork ZeRO-Inference's requirements.txt installs); facts, not code.

Attention is eager in both (no ``scaled_dot_product_attention``):

* **prefill**: ``bmm(q, k^T)`` materializes the full ``b x heads x s x s`` scores (no causal
  skipping), then mask add, ``torch.max`` with the dtype's minimum (OPT) or the
  ``/ sqrt(head_dim)`` division (Llama), softmax upcast to fp32 and cast back to half,
  ``bmm`` with V. Bytes per score element for a half-precision model: bmm write 2, add 2+2,
  max (or divide) 2+2, softmax 2+4, cast 4+2, bmm read 2 = 24 (``SCORE_BYTES_HALF``); fp32
  models skip the casts (32: four bytes per access, no cast pass). FLOP: ``4 b s^2 q_dim``.
* **decode**: ``torch.cat([past_k, k_new])`` (and V) copies the whole cache every step
  (read + write), then the bmms read it; Llama's grouped-query heads are expanded by
  ``repeat_kv`` (``expand`` + ``reshape``: a copy ``heads / kv_heads`` times larger) before
  ``matmul`` when ``heads > kv_heads``.
* **the decode cache held twice**: ``generate`` keeps the previous step's
  ``past_key_values`` (a tuple of per-layer K and V tensors, in ``model_kwargs`` and the
  step's ``model_inputs``) alive through the whole next forward, while every layer's
  ``torch.cat`` builds a new, one token longer K and V; the old tuple is dropped only after
  the forward returns (``generation/utils.py`` ``greedy_search``:
  ``outputs = self(**model_inputs)`` then ``_update_model_kwargs_for_generation``). So at
  the end of a decode forward the GPU holds the whole cache twice
  (``previous_cache_bytes``), not one layer's copy.
* **LM head**: logits of every position in the prefill (``lm_head(outputs[0])`` over
  ``b x s`` tokens); Llama then upcasts them all (``logits.float()``).
* **kernels** per decoder layer besides the GEMMs and the two attention bmms, counted from
  the forward methods (``ELEMENTWISE_KERNELS``): OPT - two LayerNorms, the q scaling, three
  ``_shape`` copies, two ``cat``, mask add, ``max``, softmax, cast, the output transpose copy,
  two residual adds, relu; Llama - two RMSNorms in half precision (upcast, pow, mean, add,
  rsqrt, mul, cast back x weight: 7 each), rotary embedding of q and k (7 each), two
  ``repeat_kv`` copies, two ``cat``, divide, mask add, softmax, cast, transpose copy, two
  residual adds, SiLU and the gate product.

Units: bytes, seconds, FLOP.
"""

from __future__ import annotations

import numpy as np

from simulator.models import DTYPE_BYTES
from simulator.ops import layer_elementwise_time_s

SCORE_BYTES_HALF = 24  # per score element, half-precision model (see the module docstring)
SCORE_BYTES_FP32 = 32
PREFILL_ATTENTION_KERNELS = 7  # bmm, add, max|div, softmax, cast, bmm, transpose copy
DECODE_CACHE_COPIES = 2  # torch.cat of K and of V: read the past, write past + new
ELEMENTWISE_KERNELS = {"opt": 16, "llama": 41}


def family(model) -> str:
    return "opt" if model.is_opt else "llama"


def score_bytes(dtype: str) -> int:
    return SCORE_BYTES_FP32 if DTYPE_BYTES[dtype] == 4 else SCORE_BYTES_HALF


def gqa_group(model) -> int:
    """Query heads per KV head (``repeat_kv``'s factor; 1 when there is no expansion)."""
    return model.num_heads // model.num_kv_heads


def prefill_attention_s(model, dev, b, s: int, dtype: str):
    """Eager prefill attention of one layer for b sequences of s tokens: the two bmms at the
    roofline (FLOP ``4 b s^2 q_dim``; bytes q, k, v, o and the scores' write and read),
    plus the score tensor's other passes at the device's streaming rate. Unit: s."""
    b = np.asarray(b, dtype=float)
    e = DTYPE_BYTES[dtype]
    scores = b * model.num_heads * float(s) * s  # elements
    g = gqa_group(model)
    kv_read = b * s * 2 * model.kv_dim * e * g  # after repeat_kv
    flop = 4.0 * b * s * s * model.q_dim
    bmm = np.maximum(flop / dev.peak_flop_per_s(dtype),
                     (2 * scores * e + 2 * b * s * model.q_dim * e + kv_read) / dev.mem_bytes_per_s)
    other = dev.stream_time_s(scores * (score_bytes(dtype) - 2 * e), PREFILL_ATTENTION_KERNELS)
    expand = dev.stream_time_s(b * s * 2 * model.kv_dim * e * (1 + g), 2) if g > 1 else 0.0
    return bmm + other + expand


def decode_attention_s(model, dev, b, context, dtype: str):
    """Eager decode attention of one layer: ``torch.cat`` copies of K and V (read the past,
    write past + new), ``repeat_kv``'s expanded copy when heads > kv_heads, the two bmms
    reading the (expanded) cache, and the scores' passes. ``context``: keys attended (past +
    the new token; may be an array over decode segments). Unit: s."""
    b = np.asarray(b, dtype=float)
    ctx = np.asarray(context, dtype=float)
    e = DTYPE_BYTES[dtype]
    kv = b * ctx * model.kv_bytes_per_token(dtype)  # the cache of one layer
    g = gqa_group(model)
    cat = dev.stream_time_s(2.0 * kv, DECODE_CACHE_COPIES)
    expand = dev.stream_time_s(kv * (1 + g), 2) if g > 1 else 0.0
    flop = 4.0 * b * ctx * model.q_dim
    read = dev.attention_read_time_s(kv * g, flop, dtype) + 2 * dev.launch_s
    scores = b * model.num_heads * ctx
    other = dev.stream_time_s(scores * (score_bytes(dtype) - 2 * e), PREFILL_ATTENTION_KERNELS - 2)
    return cat + expand + read + other


def layer_elementwise_s(model, dev, m, dtype: str):
    """Norms, activation, residual adds, rotary embedding and shape copies of one layer for
    m tokens, with the HF forward's kernel count. Unit: s."""
    return layer_elementwise_time_s(model, dev, m, dtype, 1, ELEMENTWISE_KERNELS[family(model)])


def head_s(model, dev, b, tokens: int, dtype: str):
    """(LM-head GEMM, the rest): the LM head over every one of the ``b x tokens`` positions
    (HF computes all logits); embeddings, final norm and Llama's fp32 upcast of the logits.
    Unit: s."""
    b = np.asarray(b, dtype=float)
    e = DTYPE_BYTES[dtype]
    m = b * tokens
    h, V = model.hidden_size, model.vocab_size
    gemm = dev.matmul_time_s(m, h, V, dtype, e)
    pos = 3 if model.is_opt else 0  # OPT's learned positions: gather + add
    elem = dev.stream_time_s(m * h * e * (2 + pos + 4), 6)  # gather, norm (read + write x2)
    upcast = 0.0 if model.is_opt else dev.stream_time_s(m * V * (e + 4), 1)
    return gemm, elem + upcast


def previous_cache_bytes(z):
    """Bytes of the previous decode step's cache that ``generate`` holds while the next
    forward builds the new one (module docstring): every layer's K and V at the last step's
    ``ctx_max - 1`` tokens, for the ``b`` sequences of the batch, in the stored format
    (``z``: ``simulator.memory``'s shape view). Unit: bytes (array over batch shapes)."""
    return np.asarray(z.b, dtype=float) * (z.ctx_max - 1) * z.kv_token * z.layers


def head_logits_bytes(model, b, tokens: int, dtype: str):
    """GPU bytes of the logits of ``b x tokens`` positions (and Llama's fp32 copy)."""
    e = DTYPE_BYTES[dtype]
    per = e + (0 if model.is_opt else 4)
    return np.asarray(b, dtype=float) * tokens * model.vocab_size * per
