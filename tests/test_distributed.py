"""Tensor/pipeline/data-parallel execution (validate/executor/distributed.py) on CPU with gloo:
logits equal to the single-process executor's, shards and stages as simulator.cost assumes,
refusals before any process starts, a failing rank and Ctrl-C without leftover processes,
the bytes every rank moves, and the torchrun entry."""

from __future__ import annotations

import _thread
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

from safetensors.torch import save_file  # noqa: E402

from simulator.ops import kv_share, rank_bytes  # noqa: E402
from simulator.errors import LlmsimError, PolicyError  # noqa: E402
from simulator.models import PRESETS, ModelSpec  # noqa: E402
from simulator.parallel import Layout  # noqa: E402
from simulator.policy import Placement, Policy, Workload  # noqa: E402
from simulator.vocabulary import Component  # noqa: E402
from validate.executor import ExecutorError, UnsupportedModelError, run_policy, state_dict  # noqa: E402
from validate.executor import distributed  # noqa: E402
from validate.executor.distributed import (ParallelLayout, ParallelRunError, run_parallel, split_range,  # noqa: E402
                                           tensor_shard)
from validate.executor.result import RunResult  # noqa: E402
from validate.executor.weights import RandomWeights  # noqa: E402

from helpers import rounding_tolerance  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# OPT: tied embeddings, biases everywhere. Llama: GQA (4 query / 2 kv heads, so tp 4 replicates
# every kv head), untied LM head, a vocabulary and an MLP width that tp 4 cannot split evenly.
OPT = ModelSpec(name="tiny-opt", family="opt", hidden_size=64, num_layers=4, num_heads=4, num_kv_heads=4,
                ffn_dim=128, vocab_size=128, max_position_embeddings=64, tie_word_embeddings=True)
LLAMA = ModelSpec(name="tiny-llama", family="llama", hidden_size=64, num_layers=4, num_heads=4, num_kv_heads=2,
                  ffn_dim=98, vocab_size=130, max_position_embeddings=64, rope_theta=5000.0)
MODELS = {"opt": OPT, "llama": LLAMA}
WORKLOAD = Workload(prompt_len=5, gen_len=4, num_sequences=8)  # two blocks of 2 x 2 sequences (one per dp replica)
BASE = Policy(gpu_batch_size=2, num_gpu_batches=2, dtype="fp32", overlap=False)
RUN = {"threads_per_rank": 1, "timeout_s": 60.0}
LAYOUTS = {
    "tp2": {"tp": 2}, "tp4": {"tp": 4}, "pp2": {"pp": 2}, "pp4": {"pp": 4}, "tp2xpp2": {"tp": 2, "pp": 2},
    "dp2": {"dp": 2},
}
EXTRA = {  # fewer runs: one model each
    ("opt", "pp2-4microbatches"): {"pp": 2, "gpu_batch_size": 1, "num_gpu_batches": 4},  # more in flight than stages
    ("opt", "pp3-uneven"): {"pp": 3},  # stages of 2, 1, 1 layers
    ("llama", "tp2xdp2"): {"tp": 2, "dp": 2},
    ("llama", "dp2-offloaded"): {"dp": 2, "weights": Placement(0.5, 0.5, 0.0), "cache": Placement(0.5, 0.5, 0.0)},
}
CASES = [(m, name, lay) for m in MODELS for name, lay in LAYOUTS.items()] + [(m, n, x) for (m, n), x in EXTRA.items()]


ROW_PARALLEL = ("out_proj", "o_proj", "fc2", "down_proj")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest absolute difference relative to the largest reference magnitude."""
    return float((a - b).abs().max() / b.abs().max())


@pytest.fixture(scope="module")
def reference():
    """The single-process fp32 run of each model (seeded prompts, as run_parallel's default)."""
    return {key: run_policy(spec, WORKLOAD, BASE, return_logits=True) for key, spec in MODELS.items()}


@pytest.fixture(scope="module")
def runs():
    """Parallel runs by (model, case), each launched once for the whole module."""
    cache = {}

    def get(key: str, name: str, layout: dict):
        if (key, name) not in cache:
            cache[key, name] = run_parallel(MODELS[key], WORKLOAD, BASE.with_(**layout), return_logits=True, **RUN)
        return cache[key, name]

    return get


def _descendants() -> set[int]:
    """Pids of every process below this one (from /proc)."""
    parent = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            parent[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    out, frontier = set(), {os.getpid()}
    while frontier:
        frontier = {p for p, pp in parent.items() if pp in frontier} - out
        out |= frontier
    return out


def _rundirs() -> set[str]:
    return {n for n in os.listdir(tempfile.gettempdir()) if n.startswith("llmsim-parallel-")}


@pytest.fixture
def settled(runs):
    """The process tree and temp dirs once a run has started the forkserver (which stays)."""
    runs("opt", "tp2", LAYOUTS["tp2"])
    return _descendants(), _rundirs()


# ---------------------------------------------------------------------------- shards and stages
@pytest.mark.parametrize("spec", [OPT, LLAMA, LLAMA.with_(name="tiny-qwen2", family="qwen2")], ids=lambda s: s.name)
@pytest.mark.parametrize("tp", [1, 2, 4])
def test_shards_partition_each_layer_as_the_cost_model_splits_it(spec, tp):
    src = RandomWeights(spec, seed=3)
    full = {t.name: src.get(t.name, t.shape) for t in spec.layer_tensors()}
    shards = [tensor_shard(spec, tp, r) for r in range(tp)]
    pieces = {name: [s.slice(name, x) for s in shards] for name, x in full.items()}
    replicated_kv = tp > spec.num_kv_heads
    expect = 0.0
    for name, x in full.items():
        module, _, kind = name.rpartition(".")
        got = pieces[name]
        if "norm" in module or (kind == "bias" and module.endswith(ROW_PARALLEL)):
            assert all(p is x for p in got)  # norms, row-parallel biases (added once): whole on every rank
            expect += x.numel()
        elif module.endswith(("k_proj", "v_proj")) and replicated_kv:
            # each rank holds ceil(nkv / tp) = 1 kv head (ops.kv_share); ranks tp/nkv apart hold different ones
            assert all(p.shape[0] == x.shape[0] * kv_share(spec, tp) for p in got)
            assert torch.equal(torch.cat(got[::tp // spec.num_kv_heads]), x)
            expect += x.numel() * kv_share(spec, tp)
        elif kind == "weight" and module.endswith(ROW_PARALLEL):
            assert torch.equal(torch.cat(got, dim=1), x)  # row-parallel: input columns
            expect += x.numel() / tp
        else:
            assert torch.equal(torch.cat(got), x)  # column-parallel: output rows and their biases
            expect += x.numel() / tp
    # rank 0's elements (the first pieces are the widest); equal to ops.rank_bytes (matrices / tp,
    # vectors whole) when no bias is split and no kv head replicated
    mine = sum(p[0].numel() for p in pieces.values())
    assert mine == pytest.approx(expect, rel=1e-12) if spec.ffn_dim % tp == 0 else mine >= expect
    if spec.family == "llama" and not replicated_kv and spec.ffn_dim % tp == 0:
        assert mine * 4 == rank_bytes(spec.layer_tensors(), "fp32", tp)
    local = shards[0].spec
    assert (local.num_heads, local.num_kv_heads) == (4 // tp, max(1, spec.num_kv_heads // tp))


@pytest.mark.parametrize("L,pp", [(4, 1), (4, 2), (4, 3), (4, 4), (7, 3), (80, 6)])
def test_stages_are_contiguous_with_ceil_layers_on_the_busiest(L, pp):
    lay = ParallelLayout(tp=2, pp=pp, dp=2)
    ranges = [lay.stage_layers(L, s) for s in range(pp)]
    assert ranges[0][0] == 0 and ranges[-1][1] == L
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    assert max(hi - lo for lo, hi in ranges) == Layout(pp=pp).layers_per_stage(L)
    assert min(hi - lo for lo, hi in ranges) >= 1
    order = [(d, s, t) for d in range(2) for s in range(pp) for t in range(2)]  # tp ranks adjacent, then stages
    assert [lay.place(r) for r in range(lay.gpus)] == order
    assert all(lay.rank(*lay.place(r)) == r for r in range(lay.gpus))
    assert [split_range(10, 4, i) for i in range(4)] == [(0, 3), (3, 6), (6, 8), (8, 10)]


# ---------------------------------------------------------------------------- equivalence
@pytest.mark.parametrize("key,name,layout", CASES, ids=[f"{k}-{n}" for k, n, _ in CASES])
def test_logits_equal_the_single_process_run(key, name, layout, reference, runs):
    ref = reference[key]
    got = runs(key, name, layout)
    lay = ParallelLayout(layout.get("tp", 1), layout.get("pp", 1), layout.get("dp", 1))
    assert got["logits"].shape == ref.logits.shape == (8, 4, MODELS[key].vocab_size)
    # Ranks run one thread each and other batch shapes than the single-process run, so their
    # BLAS sums in another order: equal up to rounding (helpers.rounding_tolerance).
    assert _rel(got["logits"], ref.logits) <= rounding_tolerance(MODELS[key], "fp32")
    assert got["tokens"] == ref.tokens  # greedy, free-running: every step fed back
    # the result: RunResult's keys, JSON-ready, timings positive, the parallel components present
    assert set(RunResult.__dataclass_fields__) - {"logits"} <= set(got)
    json.dumps({k: v for k, v in got.items() if k != "logits"})
    assert got["prefill_s"] > 0 and len(got["decode_step_s"]) == 3 and min(got["decode_step_s"]) > 0
    assert got["total_s"] == pytest.approx(got["prefill_s"] + sum(got["decode_step_s"]))
    assert got["throughput_tok_s"] == pytest.approx(8 * 4 / got["total_s"])
    assert len(got["ranks"]) == lay.gpus and got["layout"]["world_size"] == lay.gpus
    assert got["busiest_rank"] in range(lay.gpus)
    for rank in got["ranks"]:
        for phase in ("prefill", "decode"):
            comps = rank["component_s"][phase]
            assert all(v > 0 for v in comps.values()), comps
            assert (Component.COMMUNICATION.value in comps) == (lay.tp > 1)
            assert (Component.PIPELINE_SEND.value in comps) == (lay.pp > 1)
            assert {"matmul", "attention", "elementwise"} <= set(comps)
        assert rank["peak_memory_bytes"]["gpu"] > 0
    assert got["component_s"] == next(r["component_s"] for r in got["ranks"] if r["rank"] == got["busiest_rank"])
    assert got["layout"]["stage_layers"] == [list(lay.stage_layers(4, s)) for s in range(lay.pp)]


def test_each_rank_moves_the_bytes_of_the_schedule(runs):
    """Per rank and phase: two all-reduces of (b, t, h) per layer (cost.py's count), plus, beyond
    what cost.py counts, the vocab-parallel embedding's all-reduce on stage 0 and the (value,
    index) fp64 all_gather of the head on the last stage; stage sends of (b, t, h) hidden states,
    (b,) int64 tokens back from the last stage except after a block's last step."""
    got = runs("opt", "tp2xpp2", LAYOUTS["tp2xpp2"])
    b, h, e, s, n, nb, blocks, layers = 2, 64, 4, 5, 4, 2, 2, 2
    items = {"prefill": (blocks * nb, s), "decode": (blocks * (n - 1) * nb, 1)}
    for rank in got["ranks"]:
        first, last = rank["stage"] == 0, rank["stage"] == 1
        assert rank["layers"] == ([0, 2] if first else [2, 4])
        for phase, (count, t) in items.items():
            hidden = b * t * h * e
            comm = count * ((2 * layers + first) * hidden + last * b * 2 * 8)
            tokens_back = (blocks * nb if phase == "prefill" else blocks * (n - 2) * nb) * b * 8
            send = count * hidden if first else tokens_back
            assert rank["bytes"][phase] == {"communication": comm, "pipeline_send": send}


# ---------------------------------------------------------------------------- refusals
KV3 = ModelSpec(name="kv3", family="llama", hidden_size=48, num_layers=2, num_heads=6, num_kv_heads=3, ffn_dim=64,
                vocab_size=64, max_position_embeddings=64)
REFUSALS = {
    "tp-heads": (OPT, {"tp": 3}, {}, PolicyError, r"^--tp 3 does not divide tiny-opt's 4 attention heads$"),
    "tp-kv-heads": (KV3, {"tp": 2}, {}, PolicyError, r"^--tp 2: kv3's 3 key/value heads can be neither split"),
    "pp-layers": (OPT, {"pp": 5}, {}, PolicyError, r"^--pp 5 exceeds tiny-opt's 4 layers$"),
    "offloaded-weights": (OPT, {"tp": 2, "weights": Placement(0.5, 0.5, 0.0)}, {}, PolicyError,
                          r"^--weights 50,50,0: tensor/pipeline-parallel runs \(--tp 2 --pp 1\) keep everything on "
                          r"the GPU tier"),
    "offloaded-cache": (LLAMA, {"pp": 2, "cache": Placement(0.0, 1.0, 0.0)}, {}, PolicyError, r"^--cache 0,100,0: "),
    "compressed": (OPT, {"tp": 2, "compress_weights": True}, {}, PolicyError, r"^--compress-weights: not implemented"),
    "nprocs": (OPT, {"tp": 2}, {"nprocs": 3}, PolicyError, r"^nprocs 3 does not match --tp 2 x --pp 1 x --dp 1 = 2"),
    "sequences": (OPT, {"dp": 3}, {}, PolicyError, r"^--num-sequences 8 is not a multiple of the block size 12"),
    "prompts": (OPT, {"tp": 2}, {"prompt_ids": torch.zeros(8, 6, dtype=torch.long)}, PolicyError,
                r"^prompt_ids: expected shape \(8, 5\)"),
    "experts": (PRESETS["deepseek-v2"], {"tp": 2}, {}, UnsupportedModelError, r"Mixtral-style experts only"),
}
if not torch.cuda.is_available():
    REFUSALS["no-cuda"] = (OPT, {"tp": 2}, {"device": "cuda"}, ExecutorError, r"CUDA is not available")


@pytest.mark.parametrize("case", REFUSALS)
def test_bad_layouts_fail_with_one_line_before_any_process_starts(case, monkeypatch):
    spec, layout, kw, error, pattern = REFUSALS[case]
    monkeypatch.setattr(distributed, "launch", lambda *a, **k: pytest.fail("ranks were started"))
    monkeypatch.setattr(RandomWeights, "get", lambda *a: pytest.fail("weights were generated"))
    with pytest.raises(error) as e:
        run_parallel(spec, WORKLOAD, BASE.with_(**layout), **{**RUN, **kw})
    assert isinstance(e.value, LlmsimError)
    assert re.search(pattern, str(e.value)) and "\n" not in str(e.value)


# ---------------------------------------------------------------------------- failures and teardown
def test_checkpoint_is_sliced_like_the_seeded_weights_and_a_run_leaves_no_process(tmp_path, reference, settled):
    procs, dirs = settled
    save_file(state_dict(LLAMA), str(tmp_path / "model.safetensors"))
    got = run_parallel(LLAMA, WORKLOAD, BASE.with_(tp=2, pp=2), checkpoint=str(tmp_path), **RUN)
    assert got["tokens"] == reference["llama"].tokens
    assert _descendants() == procs and _rundirs() == dirs


def test_a_failing_rank_is_one_typed_error_and_leaves_no_process(tmp_path, settled):
    procs, dirs = settled
    weights = state_dict(OPT)
    del weights["model.decoder.layers.3.fc1.weight"]  # read only by the ranks of stage 1
    save_file(weights, str(tmp_path / "model.safetensors"))
    with pytest.raises(ParallelRunError) as e:
        run_parallel(OPT, WORKLOAD, BASE.with_(tp=2, pp=2), checkpoint=str(tmp_path), **RUN)
    msg = str(e.value)
    assert re.fullmatch(r"parallel run failed on rank [23] of 4 \(replica 0, stage 1, tp rank [01]\): ModelError: "
                        rf"checkpoint {tmp_path}: tensor 'model.decoder.layers.3.fc1.weight' is missing", msg), msg
    assert isinstance(e.value, LlmsimError)
    assert _descendants() == procs and _rundirs() == dirs


def test_ctrl_c_stops_every_rank(settled):
    procs, dirs = settled
    seen, finished = [], threading.Event()

    def interrupt_once_the_ranks_run():
        # No fixed deadline: on a busy 2-core machine four ranks importing torch took more than
        # the 30 s this used to wait, and the run then finished uninterrupted. It waits for the
        # ranks as long as the run lasts, and the run is long enough to be caught running.
        while not finished.is_set():
            extra = _descendants() - procs
            if len(extra) >= 4:
                seen.append(extra)
                _thread.interrupt_main()
                return
            time.sleep(0.005)

    # Ctrl-C as a terminal delivers it: Python's own SIGINT handler in the main thread. In the full
    # suite an earlier test leaves another handler installed (the test passed alone and failed in
    # two .ci/run here with "DID NOT RAISE"), and _thread.interrupt_main() then raises nothing.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    threading.Thread(target=interrupt_once_the_ranks_run, daemon=True).start()
    long = BASE.with_(tp=2, pp=2, gpu_batch_size=8, num_gpu_batches=4)
    try:
        run_parallel(OPT, Workload(prompt_len=8, gen_len=50, num_sequences=512), long, **RUN)
    except KeyboardInterrupt:
        pass
    else:
        pytest.fail(f"the run was not interrupted: new processes seen {seen}, SIGINT handler before {previous!r}")
    finally:
        finished.set()
        signal.signal(signal.SIGINT, previous)
    assert len(seen) == 1 and len(seen[0]) >= 4  # the four ranks were running
    assert _descendants() == procs and _rundirs() == dirs


# ---------------------------------------------------------------------------- other ways to start
def test_spawn_start_method_gives_the_same_run(reference, runs):
    got = run_parallel(OPT, WORKLOAD, BASE.with_(pp=2), start_method="spawn", return_logits=True, **RUN)
    assert got["tokens"] == reference["opt"].tokens and got["layout"]["start_method"] == "spawn"
    # The same operations on the same shapes and threads as the forkserver run: bit for bit.
    assert torch.equal(got["logits"], runs("opt", "pp2", LAYOUTS["pp2"])["logits"])


def test_torchrun_entry_prints_the_same_run(tmp_path, reference):
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    if not os.path.exists(torchrun):
        pytest.skip("torchrun is not installed")
    spec = tmp_path / "model.json"
    spec.write_text(json.dumps(LLAMA.to_dict()))
    cmd = [torchrun, "--standalone", "--nproc-per-node", "2", "-m", "validate.executor.distributed", "--model",
           str(spec), "--prompt-len", "5", "--gen-len", "4", "--num-sequences", "8", "--gpu-batch-size", "2",
           "--num-gpu-batches", "2", "--tp", "2", "--dtype", "fp32", "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=ROOT, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["tokens"] == reference["llama"].tokens
    assert got["layout"]["start_method"] == "torchrun" and len(got["ranks"]) == 2
    bad = subprocess.run(cmd[:cmd.index("--tp") + 1] + ["3"] + cmd[cmd.index("--tp") + 2:], capture_output=True,
                         text=True, timeout=180, cwd=ROOT, env=env)
    assert bad.returncode != 0 and "--tp 3 does not divide tiny-llama's 4 attention heads" in bad.stderr
