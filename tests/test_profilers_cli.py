"""``llmsim profile`` (llmsim.profile_command.run): flag errors, a real --quick profile
of this CPU-only machine that the planner accepts, the disk profiler on a small file and
the gloo process group."""

from __future__ import annotations

import io
import json
import shutil
from contextlib import redirect_stderr, redirect_stdout

import pytest
import yaml

from hardware_profiles import disk, interconnect
from llmsim import profile_command as command
from hardware_profiles.timing import Reporter
from simulator.cost import estimate
from simulator.errors import ProfileError
from simulator.hardware import load_profile
from simulator.models import get_model
from simulator.policy import Placement, Policy, Workload
from simulator.units import GB, GiB, MiB

torch = pytest.importorskip("torch")
NO_CUDA = not torch.cuda.is_available()


def run_quiet(**kw):
    args = {"out": None, "quick": True, "device": "cpu", "disk_dir": None, "force": False, "as_json": True, **kw}
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = command.run(**args)
    return code, out.getvalue(), err.getvalue()


# ------------------------------------------------------------------ flag errors (nothing is measured)
def test_refuses_to_overwrite_without_force(tmp_path):
    out = tmp_path / "mine.yaml"
    out.write_text("keep me\n")
    with pytest.raises(ProfileError, match=r"--out '.*mine\.yaml': file exists; pass --force to overwrite it"):
        run_quiet(out=str(out))
    assert out.read_text() == "keep me\n"


@pytest.mark.parametrize("name,match", [
    ("nodir/p.yaml", r"--out '.*nodir/p\.yaml': directory '.*nodir' does not exist"),
    ("p.json", r"--out '.*p\.json': a profile file must end in \.yaml or \.yml"),
])
def test_bad_out_paths(tmp_path, name, match):
    with pytest.raises(ProfileError, match=match):
        run_quiet(out=str(tmp_path / name))


def test_disk_dir_must_exist_be_a_directory_and_writable(tmp_path):
    out = str(tmp_path / "p.yaml")
    with pytest.raises(ProfileError, match=r"--disk-dir '.*missing': no such directory"):
        run_quiet(out=out, disk_dir=str(tmp_path / "missing"))
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ProfileError, match=r"--disk-dir '.*afile': not a directory"):
        run_quiet(out=out, disk_dir=str(tmp_path / "afile"))
    with pytest.raises(ProfileError, match=r"--disk-dir '/proc': cannot write a file there"):
        run_quiet(out=out, disk_dir="/proc")  # unwritable even for root


@pytest.mark.parametrize("device,match", [
    ("tpu", r"--device: expected auto, cpu, cuda or cuda:N, got 'tpu'"),
    ("cuda:x", r"--device: expected auto, cpu, cuda or cuda:N, got 'cuda:x'"),
])
def test_malformed_device(tmp_path, device, match):
    with pytest.raises(ProfileError, match=match):
        run_quiet(out=str(tmp_path / "p.yaml"), device=device)


@pytest.mark.skipif(not NO_CUDA, reason="checks the CPU-only answer")
@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_device_on_a_cpu_only_machine(tmp_path, device):
    with pytest.raises(ProfileError, match=rf"--device {device}: no CUDA device is usable on this machine"):
        run_quiet(out=str(tmp_path / "p.yaml"), device=device)
    assert not (tmp_path / "p.yaml").exists()


@pytest.mark.skipif(NO_CUDA, reason="needs CUDA")
def test_cuda_index_beyond_the_gpus(tmp_path):
    n = torch.cuda.device_count()
    with pytest.raises(ProfileError, match=rf"--device cuda:{n}: this machine has {n} CUDA device"):
        run_quiet(out=str(tmp_path / "p.yaml"), device=f"cuda:{n}")


def test_standalone_entry_point_prints_one_line_and_exits_2(tmp_path, capsys):
    out = tmp_path / "p.yaml"
    out.write_text("x")
    assert command.main(["--out", str(out), "--quick"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--force" in err and str(out) in err


# ------------------------------------------------------------------ a real --quick profile of this machine
@pytest.mark.slow
def test_quick_cpu_profile_is_accepted_by_the_planner(tmp_path):
    out = tmp_path / "ci-quick.yaml"
    code, stdout, _ = run_quiet(out=str(out), device="cpu", disk_dir=str(tmp_path))
    assert code == 0
    summary = json.loads(stdout)
    assert summary["name"] == "ci-quick" and summary["sections"] == ["cpu", "disk"]
    assert set(summary["absent"]) == {"gpu", "links", "interconnect"}
    hw = load_profile(out)
    assert hw.device_is_host and hw.gpu_count == 0 and hw.source == "measured"
    doc = yaml.safe_load(out.read_text())
    assert "gpu" not in doc and "links" not in doc
    cpu = doc["cpu"]
    # memory_GBps counts read + written of the same copy whose payload rate is memcpy_GBps.
    assert cpu["memory_GBps"] == pytest.approx(2 * cpu["memcpy_GBps"], rel=2e-3)
    assert hw.links.h2d_bytes_per_s == pytest.approx(cpu["memcpy_GBps"] * GB)
    assert 0.1 < cpu["memcpy_GBps"] < 1000 and 1 < cpu["fp32_GFLOPs"] < 1e5
    assert cpu["memory_GiB"] == pytest.approx(cpu_memory_gib(), rel=1e-3)
    assert doc["disk"]["capacity_GiB"] == pytest.approx(shutil.disk_usage(tmp_path).free / GiB, rel=0.05)
    # The tables are the ones the planner reads: OPT-125M's GEMMs and the attention grid.
    shapes = {(r["k"], r["n"]) for r in cpu["matmul_table"] if r["dtype"] == "fp32"}
    assert shapes == {(768, 768), (768, 3072), (3072, 768)}  # OPT-125M's layers
    # Six grid points; a slow machine may run out the attention deadline, and what it skipped
    # is recorded rather than silently dropped.
    skipped = doc["measurements"]["cpu"]["decode_attention"]["skipped_for_time_or_memory"]
    assert len(cpu["decode_attention_table"]) + len(skipped) == 6
    assert len(cpu["decode_attention_table"]) >= 3
    reason = "no CUDA device on this machine" if NO_CUDA else "--device cpu was given"
    assert doc["measurements"]["absent"]["gpu"] == reason
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp or scratch files
    est = estimate(get_model("opt-125m"), hw, Workload(64, 8), Policy(dtype="fp32", weights=Placement(0, 1, 0)))
    assert est.feasible
    assert est.total_latency_s > 0 and est.throughput_tok_s > 0


def cpu_memory_gib():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024 / GiB
    pytest.skip("no /proc/meminfo")


# ------------------------------------------------------------------ disk profiler on a small file
def test_disk_profiler_small_file(tmp_path, monkeypatch):
    tiny = {"file": 16 * MiB, "pass": 4 * MiB, "passes": 2, "blocks": (1 * MiB, 4 * MiB), "readers": (1, 2),
            "cached": 4 * MiB, "parallel_block": 1 * MiB}
    monkeypatch.setitem(disk.LAYOUT, True, tiny)
    monkeypatch.setattr(disk, "MIN_FILE", 4 * MiB)
    r = disk.measure(tmp_path, True, Reporter())
    v = r.values
    assert set(v) >= {"capacity_GiB", "read_direct_GBps", "write_direct_GBps", "read_cached_GBps", "write_cached_GBps"}
    m = r.measurements
    rates = sorted(x["GBps"] for x in m["direct_read"]["by_block_bytes"].values())
    med = rates[len(rates) // 2] if len(rates) % 2 else (rates[len(rates) // 2 - 1] + rates[len(rates) // 2]) / 2
    assert v["read_direct_GBps"] == pytest.approx(med, rel=1e-3)  # the median over block sizes
    assert v["read_cached_GBps"] == m["page_cache"]["cached_read"]["GBps"]
    # The ratio is stored to 3 significant digits (up to 5e-3 relative when it starts with a 1)
    # and the rates it is compared with to their own rounding (2e-3).
    assert m["page_cache"]["cached_over_direct_read"] == pytest.approx(
        v["read_cached_GBps"] / v["read_direct_GBps"], rel=5e-3 + 2e-3)
    assert sorted(m["parallel_read"]["by_readers"]) == [1, 2]
    assert m["direct_io"] == "O_DIRECT" or "refused" in m["direct_io"]
    assert "read_to_gpu" not in m  # no GPU was given
    assert list(tmp_path.iterdir()) == []  # the scratch file is gone


def test_disk_profiler_refuses_a_full_disk(tmp_path, monkeypatch):
    monkeypatch.setattr(disk, "free_bytes", lambda p: 10 * MiB)
    with pytest.raises(ProfileError, match=r"--disk-dir '.*': only 10 MiB free"):
        disk.measure(tmp_path, True, Reporter())


# ------------------------------------------------------------------ process groups (the NCCL code path, on gloo)
@pytest.mark.slow
def test_gloo_process_group_measures_all_reduce_and_send_recv():
    raw = interconnect.run_group("gloo", 2, (64 * 1024, 1024 * 1024), repeats=3, timeout_s=120)
    assert set(raw) == {"all_reduce", "send_recv"}
    for op in raw.values():
        assert sorted(op) == [64 * 1024, 1024 * 1024]
        assert all(len(v) == 3 and min(v) > 0 for v in op.values())
    summary = interconnect.summarize_ops(2, raw)
    assert [r["size_bytes"] for r in summary["all_reduce"]] == [64 * 1024, 1024 * 1024]


def test_ctrl_c_in_the_disk_profiler_removes_the_scratch_file(tmp_path, monkeypatch):
    tiny = {"file": 8 * MiB, "pass": 4 * MiB, "passes": 1, "blocks": (1 * MiB,), "readers": (1,),
            "cached": 4 * MiB, "parallel_block": 1 * MiB}
    monkeypatch.setitem(disk.LAYOUT, True, tiny)
    monkeypatch.setattr(disk, "MIN_FILE", 4 * MiB)
    real, calls = disk.io_pass, []

    def interrupted_read(fd, buf, offset, nbytes, block, write):
        calls.append(write)
        if not write:
            view = memoryview(buf)  # held by the traceback, as in a read cut short by Ctrl-C
            raise KeyboardInterrupt(view)
        return real(fd, buf, offset, nbytes, block, write)

    monkeypatch.setattr(disk, "io_pass", interrupted_read)
    with pytest.raises(KeyboardInterrupt):
        disk.measure(tmp_path, True, Reporter())
    assert calls[-1] is False and list(tmp_path.iterdir()) == []
