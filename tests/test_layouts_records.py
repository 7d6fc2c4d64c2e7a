"""The published multi-GPU runs (validate/records/published/layouts/) and their engines
(simulator/engines/static.py): each engine constant equals its derivation from the run it
cites, FasterTransformer's micro-batches and unfused attention as its code does them, NCCL's
all-reduce by hand, the class gate, and the import script's determinism."""

import json
import math
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from simulator.cost import estimate
from simulator.engines import get_engine
from simulator.engines.static import nccl_allreduce_time_s, unfused_attention_time_s
from simulator.errors import PolicyError
from simulator.hardware import load_profile
from simulator.models import ModelSpec, get_model
from simulator.policy import Placement, Policy, Workload

ROOT = pathlib.Path(__file__).resolve().parent.parent
LAYOUTS = ROOT / "validate" / "records" / "published" / "layouts"
DATA = ROOT.parent / "shared" / "data"


def models() -> dict:
    import yaml
    doc = yaml.safe_load((LAYOUTS / "models.yaml").read_text())
    return {k: get_model(v) if isinstance(v, str) else ModelSpec.from_dict(v) for k, v in doc.items()}


M = models()


def zero(engine: str):
    return get_engine(engine, layer_fixed_s=0.0)


# ------------------------------------------------------------------ constants = their derivation
def test_fastertransformer_layer_fixed_is_its_gpt_350m_batch_1_difference():
    """docs/gpt_guide.md @ df4a7534: GPT-350M at batch 1, 25.43 ms for 128 + 8 tokens and
    92.01 ms for 512 + 32; the constant is what those 24 more tokens cost beyond the
    engine's prediction without it, per layer and token."""
    m, hw, eng = M["GPT-350M"], load_profile("a100-superpod"), zero("fastertransformer")
    p1 = estimate(m, hw, Workload(128, 8), Policy(gpu_batch_size=1), eng).total_latency_s
    p2 = estimate(m, hw, Workload(512, 32), Policy(gpu_batch_size=1), eng).total_latency_s
    derived = ((92.01e-3 - 25.43e-3) - (p2 - p1)) / (m.num_layers * 24)
    assert get_engine("fastertransformer").layer_fixed.value == pytest.approx(derived, abs=0.5e-6)
    assert 50e-6 < derived < 200e-6  # ~0.1 ms per layer: FT's kernels' fixed time at batch 1


def test_deepspeed_and_tensorrt_layer_fixed_are_their_batch_1_runs():
    bloom, hw = M["BLOOM 176B"], load_profile("a100-80g-8x-bloom")
    p = estimate(bloom, hw, Workload(10, 100), Policy(gpu_batch_size=1, tp=8), zero("deepspeed-inference"))
    measured = 44.02e-3 * 1 * 100  # ms per generated token x batch x tokens (transformers-bloom-inference README)
    derived = (measured - p.total_latency_s) / (bloom.num_layers * 100)
    assert get_engine("deepspeed-inference").layer_fixed.value == pytest.approx(derived, abs=0.5e-6)
    gptj, sp = M["GPT-J 6B"], load_profile("a100-superpod")
    p = estimate(gptj, sp, Workload(128, 1), Policy(gpu_batch_size=1), zero("tensorrt-llm"))
    derived = (12e-3 - p.prefill_latency_s) / gptj.num_layers  # performance.md @ 77d24b5f: 12 ms
    assert get_engine("tensorrt-llm").layer_fixed.value == pytest.approx(derived, abs=0.5e-6)


def test_the_fixed_time_is_paid_per_layer_and_forward():
    m, hw = M["GPT-20B"], load_profile("a100-superpod")
    wl, pol = Workload(20, 8), Policy(gpu_batch_size=4, tp=2)
    a = estimate(m, hw, wl, pol, zero("fastertransformer")).total_latency_s
    b = estimate(m, hw, wl, pol, get_engine("fastertransformer", layer_fixed_s=1e-4)).total_latency_s
    assert b - a == pytest.approx(1e-4 * m.num_layers * 8, rel=1e-9)  # 8 forwards: the prefill and 7 steps


# ------------------------------------------------------------------ FasterTransformer's own behaviour
@pytest.mark.parametrize("b,tokens,pp,want", [
    (256, 20, 3, 8),     # 256 % 3 != 0; halved while > 1024 tokens: 256 -> 32 (640 tokens)
    (96, 128, 3, 12),    # 96 / 3 = 32, halved to 8 (1024 tokens, not more): 12 micro-batches
    (256, 1, 3, 1),      # a decode step: 256 tokens, no split
    (6, 1, 3, 3),        # divisible: one micro-batch per stage
    (64, 128, 1, 1),     # no pipeline, no split
])
def test_fastertransformer_micro_batches_follow_getLocalBatchSize(b, tokens, pp, want):
    assert get_engine("fastertransformer").micro_batches(b, tokens, pp) == want


def test_fastertransformer_prefill_attention_materializes_the_scores():
    m, dev = M["GPT-350M"], load_profile("a100-superpod").device
    b, s, e = 64, 512, 2
    t = unfused_attention_time_s(m, dev, np.array([b]), s, "fp16")
    scores = b * m.num_heads * s * s * e
    flop = 2 * b * s * s * m.q_dim
    qk = max(flop / dev.peak_flop_per_s("fp16"), (b * s * 2 * m.q_dim * e + scores) / dev.mem_bytes_per_s)
    assert float(t[0]) == pytest.approx(2 * qk + 2 * scores / dev.mem_bytes_per_s, rel=1e-12)
    assert float(t[0]) > 4 * scores / dev.mem_bytes_per_s * 0.99  # four passes over the scores at least


def test_pipeline_micro_batches_shorten_the_prefill_of_a_large_batch():
    m, hw = M["Megatron-Turing NLG 530B"], load_profile("a100-superpod")
    est = estimate(m, hw, Workload(128, 8), Policy(gpu_batch_size=256, tp=8, pp=3), "fastertransformer")
    whole = estimate(m, hw, Workload(128, 8), Policy(gpu_batch_size=256, tp=8, pp=3), "llmsim")
    assert est.prefill_latency_s < 0.6 * whole.prefill_latency_s  # 32 micro-batches vs 3 stage passes


# ------------------------------------------------------------------ NCCL
def test_nccl_allreduce_ring_and_tree_by_hand():
    hw = load_profile("a100-superpod")
    ic = hw.interconnect
    a_in, a_out, intra, inter = ic.intra_node_latency_s, ic.inter_node_latency_s, ic.intra_node_bytes_per_s, \
        ic.inter_node_bytes_per_s
    S = 4e6
    # one node: ring and chain have the same 2 (n - 1) steps
    assert float(nccl_allreduce_time_s(S, 8, hw, 8)) == pytest.approx(2 * 7 * a_in + 2 * 7 / 8 * S / intra)
    # 32 GPUs on 4 nodes: the ring crosses the network 4 times, the tree log2(4) levels
    ring = 2 * (28 * a_in + 4 * a_out) + 2 * 31 / 32 * S / min(inter, intra)
    tree = 2 * (7 * a_in + 2 * a_out) + 2 * 31 / 32 * S / min(inter, intra)
    assert float(nccl_allreduce_time_s(S, 32, hw, 8)) == pytest.approx(min(ring, tree))
    assert float(nccl_allreduce_time_s(S, 1, hw, 8)) == 0.0


# ------------------------------------------------------------------ refusals
def test_static_engines_keep_everything_on_the_gpu():
    for name in ("fastertransformer", "deepspeed-inference", "tensorrt-llm"):
        eng = get_engine(name)
        assert not eng.in_comparison and eng.constants[0].unit == "s"
        with pytest.raises(PolicyError, match=f"--engine {name}: keeps weights, cache and activations on the GPU"):
            estimate(M["GPT-1.3B"], load_profile("a100-superpod"), Workload(64, 8),
                     Policy(weights=Placement(0.5, 0.5, 0.0)), name)
    with pytest.raises(PolicyError, match="layer_fixed_s: -1 must be a number >= 0"):
        get_engine("fastertransformer", layer_fixed_s=-1)


# ------------------------------------------------------------------ the records
def test_layout_records_meet_their_latency_gate():
    from validate.harness import LATENCY_CLASS, check_records
    res = check_records(LAYOUTS)
    g = res["by_device"][LATENCY_CLASS]
    assert g["n"] == 328 and g["median_limit"] == 0.15 and g["max_limit"] is None
    assert g["passed"] and g["median_abs_error"] <= 0.15
    by_engine = {}
    for r in res["records"]:
        assert r["metric"] in ("total_latency_s", "prefill_latency_s") and r["error"] is not None
        by_engine.setdefault(r["engine"], []).append(abs(r["error"]))
    assert {k: len(v) for k, v in by_engine.items()} == {"fastertransformer": 318, "deepspeed-inference": 5,
                                                         "tensorrt-llm": 5}
    # every record was predicted feasible on its machine (the source's OOM rows are skipped)
    for path in LAYOUTS.rglob("*.json"):
        assert json.loads(path.read_text())["predicted"]["feasible"], path.name


def test_skipped_rows_say_why():
    import csv
    rows = list(csv.DictReader((LAYOUTS / "skipped.csv").open()))
    reasons = {r["reason"] for r in rows}
    assert len(rows) == 110 and all(r["reason"] for r in rows)
    assert any(x.startswith("throughput only") for x in reasons) and "no latency (the source says OOM)" in reasons
    derived = [r for r in rows if "is derived from" in r["reason"]]
    assert len(derived) == 4  # FT's two GPT-350M rows, DS's and TRT-LLM's batch-1 runs


@pytest.mark.skipif(not (DATA / "layouts").is_dir(), reason="shared/data/layouts is not beside the repository")
def test_import_script_rewrites_the_committed_records(tmp_path):
    out = tmp_path / "layouts"
    out.mkdir()
    (out / "models.yaml").write_text((LAYOUTS / "models.yaml").read_text())
    subprocess.run([sys.executable, str(ROOT / "scripts" / "import_layouts.py"), "--data", str(DATA),
                    "--out", str(out)], check=True, cwd=ROOT, capture_output=True)
    mine = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    theirs = sorted(p.relative_to(LAYOUTS) for p in LAYOUTS.rglob("*") if p.is_file())
    assert mine == theirs
    for rel in mine:
        a, b = (out / rel).read_bytes(), (LAYOUTS / rel).read_bytes()
        if rel.suffix != ".json" or a == b:
            assert a == b, rel
            continue
        # the predictions a record carries may differ in their last bits with the numpy/BLAS build
        _assert_same_json(json.loads(a), json.loads(b), str(rel))


def test_import_script_bad_data_dir_is_one_line():
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "import_layouts.py"), "--data", "/no/such"],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert r.stderr.startswith("import_layouts: error: --data /no/such: no such directory")


def test_ft_record_volumes_follow_the_paper_at_small_batch():
    """A 1D all-reduce per layer moves 2 (n-1)/n B L E bytes: the recorded TP8 decode step's
    communication of GPT-175B at batch 1 equals the NCCL formula for 2 all-reduces per layer."""
    m, hw = M["GPT-175B"], load_profile("a100-superpod")
    est = estimate(m, hw, Workload(128, 8), Policy(gpu_batch_size=1, tp=8), "fastertransformer")
    comm = sum(r["time_s"] for r in est.breakdown if r["phase"] == "decode" and r["component"] == "communication")
    per_step = 2 * m.num_layers * float(nccl_allreduce_time_s(m.hidden_size * 2, 8, hw, 8)) \
        + float(nccl_allreduce_time_s(m.hidden_size * 2, 8, hw, 8)) + float(nccl_allreduce_time_s(16.0, 8, hw, 8))
    assert comm == pytest.approx(7 * per_step, rel=1e-9)
    assert math.isfinite(est.total_latency_s)


def _assert_same_json(a, b, where: str) -> None:
    """Equal JSON documents, floats within 1e-9 relative (the last bits of a computed value)."""
    if isinstance(a, float) or isinstance(b, float):
        assert isinstance(a, (int, float)) and isinstance(b, (int, float)), where
        assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-300), f"{where}: {a!r} != {b!r}"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), where
        for k in a:
            _assert_same_json(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_json(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"

