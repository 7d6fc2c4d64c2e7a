"""Peak memory per tier (GPU, CPU, disk) for prefill and for decode, affine in the fractions.

``memory_terms(...)[p, phase, tier, :] @ X`` is the peak in bytes, X = [1, w_g, w_c, w_d,
c_g, c_c, c_d, h_g, h_c, h_d] as in ``simulator.cost``. Terms:

Resident shares (each tier holds its fraction of every tensor):
    weights     ``W_all``  = num_layers x layer bytes + head bytes (stored format)
    KV cache    ``C_all``  = block x (prompt_len + gen_len - 1) x kv bytes/token x num_layers
                (allocated for the whole generation; the last token's K/V is never stored)
    activations ``A_all``  = block x tokens x hidden x dtype bytes, the hidden states
                between layers (tokens = prompt_len in prefill, 1 in decode)

Working buffers (what the executor allocates on top):
    GPU   two layers of streamed weights (current + prefetched): 2 (w_c + w_d) W_layer, and
          the streamed share of the LM head; with compression one dequantized layer (or LM
          head, whichever is larger); cache of the batch in flight and the next one
          (2 (c_c + c_d) x batch x context x kv) unless attention runs on the CPU, plus a
          dequantized copy of one batch's cache when compressed; the in-flight batch's
          activations (hidden in and out, q/k/v, attention output, MLP intermediate), the
          next batch's offloaded activations, decode attention scores and the logits.
          Prefill attention is fused (scores are never materialised).
    CPU   pinned bounce buffers for disk reads (2 w_d W_layer, the disk share of the LM
          head, the disk share of one or two batches' cache, 2 h_d of a batch's
          activations) and the CPU-attention workspace (scores of the CPU share).
    disk  the disk shares only.

Sources: FlexGen (arXiv 2303.06865) section 4.2 for the resident terms; the working buffers
are those of ``validate/executor``. Unit: bytes.
"""

from __future__ import annotations

import numpy as np

from simulator.models import DTYPE_BYTES, ModelSpec

N_X = 10
C0, WG, WC, WD, CG, CC, CD, HG, HC, HD = range(N_X)
GPU, CPU, DISK = 0, 1, 2
PREFILL, DECODE = 0, 1
SCORE_BYTES = 4  # attention scores are fp32 (softmax in fp32)


def memory_terms(model: ModelSpec, hw, workload, shape, dtype: str) -> np.ndarray:
    """Affine peak-memory coefficients, shape (P, 2 phases, 3 tiers, 10). Unit: bytes."""
    e = DTYPE_BYTES[dtype]
    P = len(shape)
    s, n = workload.prompt_len, workload.gen_len
    h, L, V = model.hidden_size, model.num_layers, model.vocab_size
    b = shape.gpu_batch_size
    nb = shape.num_gpu_batches
    catt = shape.cpu_attention
    cw = shape.compress_weights
    cc_ = shape.compress_cache
    block = b * nb
    ctx_max = s + n - 1  # tokens whose K/V is stored
    ctx_att = s + n  # keys attended at the last decode step (upper bound)

    fmt_layer = np.where(cw > 0, model.layer_weight_bytes("int4"), model.layer_weight_bytes(dtype))
    fmt_head = np.where(cw > 0, model.head_weight_bytes("int4"), model.head_weight_bytes(dtype))
    lm = model.lm_head_tensor()
    lm_bytes = np.where(cw > 0, lm.nbytes("int4"), lm.nbytes(dtype))
    W_all = L * fmt_layer + fmt_head
    kvq = np.where(cc_ > 0, model.kv_bytes_per_token(compressed=True), model.kv_bytes_per_token(dtype))
    kv16 = model.kv_bytes_per_token(dtype)
    C_all = block * ctx_max * kvq * L
    batch_cache = b * ctx_max * kvq

    out = np.zeros((P, 2, 3, N_X))
    for phase, tokens in ((PREFILL, s), (DECODE, 1)):
        A_all = block * tokens * h * e
        batch_act = b * tokens * h * e
        m = out[:, phase]
        # Resident shares.
        for tier, (iw, ic, ia) in ((GPU, (WG, CG, HG)), (CPU, (WC, CC, HC)), (DISK, (WD, CD, HD))):
            m[:, tier, iw] += W_all
            m[:, tier, ic] += C_all
            m[:, tier, ia] += A_all
        # GPU working buffers.
        for i in (WC, WD):
            m[:, GPU, i] += 2 * fmt_layer + lm_bytes
        m[:, GPU, C0] += cw * max(model.layer_weight_bytes(dtype), lm.nbytes(dtype))
        for i in (CC, CD):
            m[:, GPU, i] += (1 - catt) * 2 * batch_cache
        m[:, GPU, C0] += cc_ * b * ctx_max * kv16 + b * tokens * 2 * model.kv_dim * e  # dequantized + new K/V
        mlp_width = model.ffn_dim * (1 if model.is_opt else 3)
        if model.is_moe:
            mlp_width = model.ffn_dim * 3 * model.experts_per_token
        in_flight = b * tokens * (3 * h + model.q_dim * 2 + 2 * model.kv_dim + mlp_width) * e
        m[:, GPU, C0] += in_flight + b * V * e
        for i in (HC, HD):
            m[:, GPU, i] += 2 * batch_act
        if phase == DECODE:
            m[:, GPU, C0] += b * model.num_heads * ctx_att * SCORE_BYTES
        # CPU working buffers: pinned bounce buffers for disk reads, CPU-attention workspace.
        m[:, CPU, WD] += 2 * fmt_layer + lm_bytes
        m[:, CPU, CD] += np.where(catt > 0, 1.0, 2.0) * batch_cache
        m[:, CPU, HD] += 2 * batch_act
        if phase == DECODE:
            ws = catt * b * (model.num_heads * ctx_att * SCORE_BYTES + 2 * model.q_dim * SCORE_BYTES)
            m[:, CPU, CC] += ws
            m[:, CPU, CD] += ws
    return out
