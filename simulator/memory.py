"""Peak memory per tier (GPU, CPU, disk) for prefill and for decode, affine in the fractions.

``memory_terms(...)[p, phase, tier, :] @ X`` is the peak in bytes, X = [1, w_g, w_c, w_d,
c_g, c_c, c_d, h_g, h_c, h_d] as in ``simulator.cost``. The GPU figure is per GPU; the CPU
and disk figures are per node (all GPUs of the run on one node share its RAM and disk).

Resident shares (each tier holds its fraction of every tensor; per tensor-parallel rank,
matrices are split tp ways, the KV heads ``kv_share`` ways, hidden states are whole):
    weights     ``W_all``  = layers of the stage x layer bytes + head bytes (stored format)
    KV cache    ``C_all``  = block x (prompt_len + gen_len - 1) x kv bytes/token x layers
                (allocated for the whole generation; the last token's K/V is never stored)
    activations ``A_all``  = block x tokens x hidden x dtype bytes, the hidden states
                between layers (tokens = prompt_len in prefill, 1 in decode)

Working buffers, as ``validate/executor`` allocates them:
    GPU   two layers of streamed weights (current + prefetched): 2 (w_c + w_d) W_layer, and
          the streamed share of the LM head; with compression one dequantized layer (or LM
          head, whichever is larger); the offloaded cache rows of the batch in flight and
          the next one (2 (c_c + c_d) x batch x context x kv) unless attention runs on the
          CPU - then only two prompt-long slabs that stage the prefill's new K/V on their
          way out; a dequantized copy of one batch's cache when compressed; the batch's
          activations in flight (hidden in and out, q/k/v, attention output, MLP
          intermediate), the next batch's offloaded activations, and the logits. Attention
          is fused (scaled_dot_product_attention): scores are never materialised.
    CPU   pinned bounce buffers for disk reads: 2 w_d W_layer, the disk share of the LM
          head, two slots of one batch's disk cache rows, and 4 h_d of a batch's activations
          (two to load, two to store); the CPU attention query/output buffers (fp32).
    disk  the disk shares only.

Sources: FlexGen (arXiv 2303.06865) section 4.2 for the resident terms; the working buffers
are those of ``validate/executor/engine.py``. Unit: bytes.
"""

from __future__ import annotations

import numpy as np

from simulator.models import DTYPE_BYTES, ModelSpec

N_X = 10
C0, WG, WC, WD, CG, CC, CD, HG, HC, HD = range(N_X)
GPU, CPU, DISK = 0, 1, 2
PREFILL, DECODE = 0, 1
SCORE_BYTES = 4  # CPU attention works in fp32


def memory_terms(model: ModelSpec, hw, workload, shape, dtype: str, rv=None) -> np.ndarray:
    """Affine peak-memory coefficients, shape (P, 2 phases, 3 tiers, 10). Unit: bytes.
    ``rv``: the ``cost.RankView`` of the parallel layout (None: one GPU)."""
    from simulator.cost import kv_share, rank_bytes

    tp = rv.tp if rv else 1
    L = rv.layers if rv else model.num_layers
    per_node = rv.ranks_per_node if rv else 1
    e = DTYPE_BYTES[dtype]
    P = len(shape)
    s, n = workload.prompt_len, workload.gen_len
    h, V = model.hidden_size, model.vocab_size
    b = shape.gpu_batch_size
    nb = shape.num_gpu_batches
    catt = shape.cpu_attention
    cw = shape.compress_weights
    cc_ = shape.compress_cache
    block = b * nb
    ctx_max = s + n - 1  # tokens whose K/V is stored

    layer_t, head_t = model.layer_tensors(), model.head_tensors()
    kvs = kv_share(model, tp)
    fmt_layer = np.where(cw > 0, rank_bytes(layer_t, "int4", tp, kvs), rank_bytes(layer_t, dtype, tp, kvs))
    fmt_head = np.where(cw > 0, rank_bytes(head_t, "int4", tp), rank_bytes(head_t, dtype, tp))
    lm = model.lm_head_tensor()
    lm_bytes = np.where(cw > 0, lm.nbytes("int4"), lm.nbytes(dtype)) / tp
    W_all = L * fmt_layer + fmt_head
    ks = kvs
    kvq = np.where(cc_ > 0, model.kv_bytes_per_token(compressed=True), model.kv_bytes_per_token(dtype)) * ks
    kv16 = model.kv_bytes_per_token(dtype) * ks
    C_all = block * ctx_max * kvq * L
    batch_cache = b * ctx_max * kvq
    q_dim, kv_dim = model.q_dim / tp, model.kv_dim * ks

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
        m[:, GPU, C0] += cw * max(rank_bytes(layer_t, dtype, tp, kvs), lm.nbytes(dtype) / tp)
        staging = (1 - catt) * 2 * batch_cache
        if phase == PREFILL:
            staging = staging + catt * 2 * b * s * kvq
        for i in (CC, CD):
            m[:, GPU, i] += staging
        m[:, GPU, C0] += cc_ * b * ctx_max * kv16 + b * tokens * 2 * kv_dim * e  # dequantized + new K/V
        mlp_width = model.ffn_dim * (1 if model.is_opt else 3) / tp
        if model.is_moe:
            mlp_width = mlp_width * model.experts_per_token
        in_flight = b * tokens * (3 * h + q_dim * 2 + 2 * kv_dim + mlp_width) * e
        m[:, GPU, C0] += in_flight + b * V / tp * e
        for i in (HC, HD):
            m[:, GPU, i] += 2 * batch_act
        # CPU working buffers: pinned bounce buffers for disk reads, CPU-attention buffers.
        m[:, CPU, WD] += 2 * fmt_layer + lm_bytes
        m[:, CPU, CD] += 2 * batch_cache
        m[:, CPU, HD] += 4 * batch_act
        if phase == DECODE:
            ws = catt * b * 2 * q_dim * SCORE_BYTES
            m[:, CPU, CC] += ws
            m[:, CPU, CD] += ws
    out[:, :, CPU] *= per_node  # the node's RAM and disk hold every local GPU's share
    out[:, :, DISK] *= per_node
    return out
