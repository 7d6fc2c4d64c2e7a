"""The CPU suite catches a real regression (issue 9.3): a profile of this machine whose memcpy
rate is halved, fed to the suite, fails it - while the same measurements compared with the
honest profile pass its gates. Runs the real executor and profiler (about 2-3 minutes on the
2-core machine); on a machine too busy to measure it is skipped, never passed.

The cases are the ones whose prediction the halved rate moves most: weights (and cache) on
the CPU tier, one GPU batch per block, so every layer's weight copy is paid per GPU batch,
in the dtype among those the profile rates where compute is fastest and the copy's share of
the time largest (on the 2-core EPYC this was written on: bf16, the halved rate moves their
predicted throughput by 24-27%; in fp32 by 15-16%, too little to show against the 10% median
gate)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest.importorskip("torch")

from llmsim import suites  # noqa: E402
from simulator.cost import estimate  # noqa: E402
from simulator.hardware import load_profile  # noqa: E402
from simulator.policy import Placement, Policy  # noqa: E402
from validate.harness import CI_MAX_LIMIT, CI_MEDIAN_LIMIT, summarize  # noqa: E402

CPU = Placement(0, 1, 0)
WAIT_BUDGET_S = 60.0


def copy_bound_cases(dtype: str):
    opt, llama = suites.ci_models()
    base = dict(gpu_batch_size=suites.CI_BATCH, num_gpu_batches=1, dtype=dtype)
    return [(f"{m.name}/{label}-{dtype}", m, Policy(**base, **kw)) for m in (opt, llama)
            for label, kw in (("weights-cpu-one-batch", dict(weights=CPU)),
                              ("weights-cache-cpu-one-batch", dict(weights=CPU, cache=CPU)))]


def shifts(cases, honest, doctored) -> list[float]:
    """Relative change of each case's predicted throughput under the doctored profile."""
    return [estimate(m, doctored, suites.CI_WORKLOAD, p).throughput_tok_s
            / estimate(m, honest, suites.CI_WORKLOAD, p).throughput_tok_s - 1 for _, m, p in cases]


def halve_memcpy(src: Path, dst: Path) -> float:
    text = src.read_text()
    m = re.search(r"^(\s*memcpy_GBps:\s*)([0-9.eE+-]+)", text, flags=re.M)
    assert m, f"{src} has no cpu.memcpy_GBps"
    rate = float(m.group(2))
    dst.write_text(text[:m.start()] + f"{m.group(1)}{rate / 2!r}" + text[m.end():])
    return rate


def twice_the_gemm_rate(src: Path, dst: Path) -> None:
    """Every measured GEMM time of the profile (``*matmul_table`` points) halved."""
    import yaml

    def walk(node, in_table=False):
        if isinstance(node, dict):
            for k, v in node.items():
                if in_table and k in ("time_us", "p10_us", "p90_us"):
                    node[k] = [t / 2 for t in v] if isinstance(v, list) else v / 2
                else:
                    walk(v, in_table or str(k).endswith("matmul_table"))
        elif isinstance(node, list):
            for v in node:
                walk(v, in_table)

    data = yaml.safe_load(src.read_text())
    walk(data)
    dst.write_text(yaml.safe_dump(data, sort_keys=False))


@pytest.fixture(scope="module")
def honest_profile(tmp_path_factory) -> Path:
    """One profile of this machine for the suite's copy-bound cases, shared by both tests
    (profiling takes about 35 s)."""
    d = tmp_path_factory.mktemp("honest")
    path = d / "honest.yaml"
    models = list({m.name: m for _, m, _ in copy_bound_cases("fp32")}.values())
    try:
        suites._profile(str(d), str(path), models, suites.NoiseGuard(suites.SuiteState()), lambda t: None, False)
    except suites.TooBusy as e:
        pytest.skip(f"machine too busy to profile: {e}")
    return path


def demonstrate(tmp_path: Path, honest, doctored_path: Path, cases) -> None:
    """The suite fed the doctored profile fails; the honest profile passes the same runs."""
    # A shorter waiting budget than the suite's own (240 s): on a noisy machine this test
    # ends in "too busy" (skipped) within about a minute instead of four.
    result = suites.run_ci_suite(str(tmp_path), profile_path=str(doctored_path), cases=cases,
                                 guard=suites.NoiseGuard(suites.SuiteState(), budget_s=WAIT_BUDGET_S))
    if result["verdict"] == "too_busy":
        pytest.skip(f"machine too busy to measure: {result['too_busy']}")
    assert result["verdict"] == "failed", result
    assert result["exit_code"] == suites.EXIT_FAILED

    # The same measurements against the honest profile pass: the failure is the regression's.
    by_name = {r["name"]: r for r in result["cases"]}
    honest_errors = [estimate(m, honest, suites.CI_WORKLOAD, p).throughput_tok_s
                     / by_name[n]["measured_throughput_tok_s"] - 1 for n, m, p in cases]
    med, mx = summarize(honest_errors)
    assert med <= CI_MEDIAN_LIMIT and mx <= CI_MAX_LIMIT, honest_errors


def test_a_profile_with_half_the_memcpy_rate_fails_the_suite(tmp_path, honest_profile):
    honest_path, doctored_path = honest_profile, tmp_path / "half-memcpy.yaml"
    halve_memcpy(honest_path, doctored_path)
    honest, doctored = load_profile(str(honest_path)), load_profile(str(doctored_path))
    assert doctored.memcpy_bytes_per_s == pytest.approx(honest.memcpy_bytes_per_s / 2, rel=1e-9)
    by_dtype = {dt: copy_bound_cases(dt) for dt in ("fp32", "bf16") if dt in honest.cpu.dtypes}
    moved = {dt: sorted(shifts(c, honest, doctored)) for dt, c in by_dtype.items()}
    dtype = min(moved, key=lambda dt: moved[dt][len(moved[dt]) // 2])
    cases = by_dtype[dtype]
    # Power: the regression must move the median prediction well past the median gate, else
    # this machine cannot show it (the copy's share of the time depends on the machine: on
    # the 2-core Xeon with one compute thread the bf16 cases moved by 6-26%, fp32 by 3-5%).
    # Not a verdict on the suite: skipped, never passed; the GEMM test below has the power.
    if moved[dtype][len(cases) // 2] >= -2 * CI_MEDIAN_LIMIT:
        pytest.skip(f"the halved memcpy rate moves the copy-bound cases too little on this machine to show "
                    f"against the {CI_MEDIAN_LIMIT:.0%} median gate: {moved}")
    demonstrate(tmp_path, honest, doctored_path, cases)


def test_a_profile_with_twice_the_gemm_rate_fails_the_suite(tmp_path, honest_profile):
    """The other half of the time: every GEMM of the profile measured twice as fast (a
    profiler regression, or a table from a faster machine) moves the fp32 cases' predicted
    throughput well past the gates, and the suite must say "failed"."""
    honest_path, doctored_path = honest_profile, tmp_path / "twice-gemm.yaml"
    twice_the_gemm_rate(honest_path, doctored_path)
    honest, doctored = load_profile(str(honest_path)), load_profile(str(doctored_path))
    cases = copy_bound_cases("fp32")
    moved = sorted(shifts(cases, honest, doctored))
    assert moved[len(moved) // 2] > 2 * CI_MEDIAN_LIMIT, f"twice the GEMM rate hardly moves the cases: {moved}"
    demonstrate(tmp_path, honest, doctored_path, cases)
