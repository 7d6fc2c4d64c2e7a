"""Peak memory per tier (GPU, CPU, disk) for prefill and for decode, affine in the fractions.

``memory_terms(...)[p, phase, tier, :] @ X`` is the peak in bytes, X = [1, w_g, w_c, w_d,
c_g, c_c, c_d, h_g, h_c, h_d] as in ``simulator.terms``. The GPU figure is per GPU; the CPU
and disk figures are per node (all GPUs of the run on one node share its RAM and disk).

Resident shares (each tier holds its fraction of every tensor; per tensor-parallel rank,
matrices are split tp ways, the KV heads ``kv_share`` ways, hidden states are whole) are the
same for every engine:
    weights     ``W_all``  = layers of the stage x layer bytes + head bytes (stored format)
    KV cache    ``C_all``  = block x (prompt_len + gen_len - 1) x kv bytes/token x layers
                (allocated for the whole generation; the last token's K/V is never stored)
    activations ``A_all``  = block x tokens x hidden x dtype bytes, the hidden states
                between layers (tokens = prompt_len in prefill, 1 in decode)
Sources: FlexGen (arXiv 2303.06865) section 4.2. The working buffers (streamed weights,
staging of offloaded cache, activations in flight) are the engine's: each engine adds its own
to the ``MemorySizes`` of a batch shape (``simulator.engines``). Unit: bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulator.models import DTYPE_BYTES, ModelSpec
from simulator.moe import ep_saving
from simulator.ops import kv_share, rank_bytes
from simulator.terms import CC, CD, CG, HC, HD, HG, N_X, WC, WD, WG

GPU, CPU, DISK = 0, 1, 2  # tier axis of the memory array
PREFILL, DECODE = 0, 1  # phase axis
TIER_FRACTIONS = ((GPU, (WG, CG, HG)), (CPU, (WC, CC, HC)), (DISK, (WD, CD, HD)))


@dataclass(frozen=True)
class MemorySizes:
    """Sizes of one batch shape's tensors on one GPU rank (arrays of length P), for the
    resident shares and the engines' buffers. Unit: bytes."""

    model: ModelSpec
    dtype: str
    tp: int
    layers: int  # of the busiest stage
    prompt_len: int
    ctx_max: int  # tokens whose K/V is stored: prompt_len + gen_len - 1
    b: np.ndarray  # gpu batch size
    nb: np.ndarray
    cpu_attention: np.ndarray
    compress_weights: np.ndarray
    compress_cache: np.ndarray
    layer: np.ndarray  # one layer's weights in their stored format
    layer16: float  # ... uncompressed
    head: np.ndarray  # embeddings + final norm + LM head, stored format
    lm_head: np.ndarray  # the LM head (or tied embedding) alone, stored format
    lm_head16: float
    kv_token: np.ndarray  # K+V bytes of one token in one layer, stored format
    kv_token16: float
    ep: np.ndarray = 1.0  # expert-parallel degree (simulator.moe)
    fetch_experts: np.ndarray = 0.0  # offloaded experts copied in after the routing (0/1)
    cpu_experts: np.ndarray = 0.0  # offloaded experts computed on the CPU (0/1)
    rv: object = None  # the parallel.RankView (its partition layouts), None for one GPU

    @property
    def batch_cache(self):
        """One GPU batch's cache of one layer at full length."""
        return self.b * self.ctx_max * self.kv_token

    def batch_act(self, tokens: int):
        """One GPU batch's hidden states of ``tokens`` tokens."""
        return self.b * tokens * self.model.hidden_size * DTYPE_BYTES[self.dtype]


def memory_sizes(model: ModelSpec, workload, shape, dtype: str, rv=None) -> MemorySizes:
    tp = rv.tp if rv else 1
    kvs = kv_share(model, tp)
    kv_cache = kvs  # share of the cache's K/V heads on a rank
    if rv is not None and rv.partition is not None:  # the decode phase's cache sharding (simulator.layouts)
        kv_cache = rv.partition.phase("decode").cache_share(shape.gpu_batch_size)
    cw, cc = shape.compress_weights, shape.compress_cache
    layer_t, head_t = model.layer_tensors(), model.head_tensors()
    lm = model.lm_head_tensor()
    ep = np.where(shape.expert_parallel > 0, float(rv.dp if rv else 1), 1.0)
    layer = np.where(cw > 0, rank_bytes(layer_t, "int4", tp, kvs), rank_bytes(layer_t, dtype, tp, kvs))
    if model.is_moe:  # expert parallelism: a GPU holds ceil(E / ep) of the routed experts
        layer = layer - np.where(cw > 0, ep_saving(model, "int4", tp, ep), ep_saving(model, dtype, tp, ep))
    return MemorySizes(
        model=model, dtype=dtype, tp=tp, layers=rv.layers if rv else model.num_layers, prompt_len=workload.prompt_len,
        ctx_max=workload.prompt_len + workload.gen_len - 1, b=shape.gpu_batch_size, nb=shape.num_gpu_batches,
        cpu_attention=shape.cpu_attention, compress_weights=cw, compress_cache=cc,
        layer=layer, layer16=rank_bytes(layer_t, dtype, tp, kvs),
        head=np.where(cw > 0, rank_bytes(head_t, "int4", tp), rank_bytes(head_t, dtype, tp)),
        lm_head=np.where(cw > 0, lm.nbytes("int4"), lm.nbytes(dtype)) / tp, lm_head16=lm.nbytes(dtype) / tp,
        kv_token=np.where(cc > 0, model.kv_bytes_per_token(compressed=True), model.kv_bytes_per_token(dtype)) * kv_cache,
        kv_token16=model.kv_bytes_per_token(dtype) * kv_cache, rv=rv, ep=ep, fetch_experts=shape.fetch_experts,
        cpu_experts=shape.cpu_experts)


def memory_terms(model: ModelSpec, workload, shape, dtype: str, rv=None, add_buffers=None) -> np.ndarray:
    """Affine peak-memory coefficients, shape (P, 2 phases, 3 tiers, 10): the resident
    shares above plus ``add_buffers(out, sizes)``, the engine's working buffers. ``rv``: the
    ``parallel.RankView`` of the layout (None: one GPU). Unit: bytes."""
    z = memory_sizes(model, workload, shape, dtype, rv)
    per_node = rv.ranks_per_node if rv else 1
    e = DTYPE_BYTES[dtype]
    block = z.b * z.nb
    W_all = z.layers * z.layer + z.head
    C_all = block * z.ctx_max * z.kv_token * z.layers
    out = np.zeros((len(z.b), 2, 3, N_X))
    part = rv.partition if rv is not None else None
    for phase, tokens in ((PREFILL, workload.prompt_len), (DECODE, 1)):
        A_all = block * tokens * model.hidden_size * e
        if part is not None:  # the layout's share of the hidden states (simulator.layouts)
            A_all = A_all * part.phase("prefill" if phase == PREFILL else "decode").hidden_share(z.b)
        for tier, (iw, ic, ia) in TIER_FRACTIONS:
            out[:, phase, tier, iw] += W_all
            out[:, phase, tier, ic] += C_all
            out[:, phase, tier, ia] += A_all
    if add_buffers is not None:
        add_buffers(out, z)
    out[:, :, CPU] *= per_node  # the node's RAM and disk hold every local GPU's share
    out[:, :, DISK] *= per_node
    return out
