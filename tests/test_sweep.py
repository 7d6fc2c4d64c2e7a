"""The vectorized path equals estimate() policy by policy."""

import numpy as np
import pytest

from simulator.cost import estimate
from simulator.hardware import load_profile
from simulator.models import get_model
from simulator.policy import Placement, Policy, Workload
from simulator.sweep import evaluate_policies


def _random_policies(rng, n):
    out = []
    for _ in range(n):
        fr = [rng.dirichlet(np.ones(3)) for _ in range(3)]
        fr = [Placement(*(np.round(f, 3)[:2]), 1 - np.round(f, 3)[:2].sum()) for f in fr]
        catt = bool(rng.integers(2))
        out.append(Policy(gpu_batch_size=int(rng.choice([1, 4, 16, 48])), num_gpu_batches=int(rng.integers(1, 5)),
                          weights=fr[0], cache=fr[1], activations=fr[2], cpu_attention=catt,
                          compress_weights=bool(rng.integers(2)), compress_cache=bool(rng.integers(2)) and not catt,
                          overlap=bool(rng.integers(2))))
    return out


@pytest.mark.parametrize("model,hw", [("opt-30b", "t4-gcp"), ("llama-2-70b", "h100-pcie5"),
                                      ("mixtral-8x7b", "a100-80g-sxm")])
def test_sweep_equals_estimate(model, hw):
    m, h = get_model(model), load_profile(hw)
    wl = Workload(256, 16)
    pols = _random_policies(np.random.default_rng(0), 60)
    df = evaluate_policies(m, h, wl, pols)
    for p, row in zip(pols, df.itertuples()):
        e = estimate(m, h, wl, p)
        assert row.total_latency_s == pytest.approx(e.total_latency_s, rel=1e-12)
        assert row.prefill_latency_s == pytest.approx(e.prefill_latency_s, rel=1e-12)
        assert row.throughput_tok_s == pytest.approx(e.throughput_tok_s, rel=1e-12)
        assert row.peak_gpu_bytes == pytest.approx(e.peak_memory_bytes["gpu"], rel=1e-12)
        assert row.feasible == e.feasible
