"""Operation counts the executor really launches vs simulator.cost's executor-contract constants.

Counts are measured on the CPU device, in fp16 and in fp32, by a dispatch-mode counter
around real executor runs (validate/executor/opcount.py). On CUDA the counts may differ
(fused RMSNorm, for instance); measure them there with measure_op_counts(device="cuda").
"""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from simulator.engines import llmsim as cost  # noqa: E402  (the executor's contract)
from validate.executor.opcount import OpCounter, measure_op_counts, tiny_spec  # noqa: E402


@pytest.fixture(scope="module")
def counts():
    return {(family, dt): measure_op_counts(family, dtype=dt) for family in ("opt", "llama") for dt in ("fp16", "fp32")}


def _key(family, dt):
    return family, "fp32" if dt == "fp32" else "half"


def test_counter_counts_work_and_skips_views():
    import torch

    x = torch.ones(4, 8)
    c = OpCounter()
    with c:
        y = x.view(8, 4).t().contiguous()  # view, view, one copy
        z = y + 1  # one add
        z.unsqueeze(0)
    assert c.counts[("none", "unlabelled")] == 2


def test_counts_are_stable_across_phases(counts):
    for key, c in counts.items():
        assert c.elementwise_per_layer["prefill"] == c.elementwise_per_layer["decode"], key
        assert c.head_per_batch["prefill"] == c.head_per_batch["decode"], key


def test_elementwise_and_head_kernels_match(counts):
    for (family, dt), c in counts.items():
        assert c.elementwise_per_layer["decode"] == cost.ELEMENTWISE_KERNELS[_key(family, dt)], (family, dt)
        assert c.head_per_batch["decode"] == cost.HEAD_KERNELS[_key(family, dt)], (family, dt)


def test_compression_and_cpu_attention_ops_match(counts):
    for (family, dt), c in counts.items():
        n_mat = sum(t.is_matrix for t in tiny_spec(family).layer_tensors())
        # all weights on one tier: one dequantization call of DEQUANT_KERNELS_PER_TIER operators per layer
        assert c.dequant_per_tensor["weights"] * n_mat == cost.DEQUANT_KERNELS_PER_TIER, (family, dt)
        assert c.dequant_per_tensor["cache"] * 2 == cost.DEQUANT_CACHE_KERNELS, (family, dt)
        assert c.quant_per_tensor == cost.QUANT_KERNELS_PER_TENSOR[_key(family, dt)[1]], (family, dt)
        assert c.cpu_attention_ops == cost.CPU_ATTENTION_OPS, (family, dt)
