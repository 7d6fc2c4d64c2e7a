import pytest
from hypothesis import given
from hypothesis import strategies as st

from simulator.models import get_model
from simulator.placement import (achievable_tensor_placements, assign_tensors, realized_placement, realized_rows,
                                 split_counts)
from simulator.policy import Placement
from simulator.vocabulary import Tier


def test_midpoint_rule_on_opt_layer():
    m = get_model("opt-6.7b")
    sizes = [t.nbytes("fp16") for t in m.layer_tensors()]
    tiers = assign_tensors(sizes, Placement(0.2, 0.8, 0.0))
    names = [t.name for t in m.layer_tensors()]
    gpu = [n for n, t in zip(names, tiers) if t is Tier.GPU]
    # q, k and v (3/12 of the matrices) straddle 20%: q and k on the GPU, v's midpoint is 20.8%.
    assert "self_attn.q_proj.weight" in gpu and "self_attn.v_proj.weight" not in gpu
    real = realized_placement(sizes, tiers)
    assert real.gpu_frac == pytest.approx(2 / 12, abs=1e-3)
    # Tiers are a GPU prefix, a CPU middle and a disk suffix.
    order = {Tier.GPU: 0, Tier.CPU: 1, Tier.DISK: 2}
    assert [order[t] for t in tiers] == sorted(order[t] for t in tiers)


def test_achievable_placements_are_reproduced_exactly():
    m = get_model("llama-2-7b")
    sizes = [t.nbytes("fp16") for t in m.layer_tensors()]
    options = achievable_tensor_placements(sizes)
    assert len(options) > 20
    for p in options:
        real = realized_placement(sizes, assign_tensors(sizes, p))
        assert real.as_tuple() == pytest.approx(p.as_tuple(), abs=1e-12)


@given(st.integers(1, 10_000), st.integers(0, 100), st.integers(0, 100))
def test_split_counts_sum_and_closeness(n, a, b):
    total = a + b + 1
    p = Placement(a / total, b / total, 1 / total)
    counts = split_counts(n, p)
    assert sum(counts) == n and min(counts) >= 0
    for c, f in zip(counts, p.as_tuple()):
        assert abs(c - f * n) < 1.0 + 1e-9
    assert realized_rows(n, p).as_tuple() == pytest.approx([c / n for c in counts])
