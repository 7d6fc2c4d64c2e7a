"""Faults while writing and Ctrl-C: nothing half-written, nothing measured lost (issue 9,
section 5). A full disk is simulated by making fsync fail with ENOSPC for the files of one
folder; concurrency and Ctrl-C use real ``python -m llmsim`` processes."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from helpers import run_cli, without_progress
from simulator.errors import OutputError
from simulator.files import StagedFiles, atomic_write

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
PNG_END = b"IEND\xaeB`\x82"  # the last chunk of every complete PNG


def _full_disk(monkeypatch, folder: Path, names=("",)):
    """fsync of a file under ``folder`` whose name contains one of ``names`` fails with
    ENOSPC (the error a full disk gives when the data reaches it)."""
    real = os.fsync
    folder = str(folder.resolve())

    def fsync(fd):
        target = os.readlink(f"/proc/self/fd/{fd}")
        if target.startswith(folder + os.sep) and any(n in os.path.basename(target) for n in names):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)
    monkeypatch.setattr(os, "fsync", fsync)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if ".tmp" in p.name or p.name.startswith(".llmsim-probe"))


def _complete_report(folder: Path) -> None:
    names = {p.name for p in folder.iterdir()}
    assert names == {"report.md", "report.html", "memory.png", "components.png", "pareto.png", "configs.csv"}, names
    for png in ("memory.png", "components.png", "pareto.png"):
        data = (folder / png).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and data.endswith(PNG_END), png
    html = (folder / "report.html").read_text()
    assert html.startswith("<!doctype html>") and html.endswith("</body></html>")
    assert html.count("data:image/png;base64,") == 3
    assert (folder / "report.md").read_text().startswith("# Capacity plan:")


# ------------------------------------------------------------------ the writing helpers
@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_atomic_write_on_full_disk_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "data.json"
    target.write_text("old")
    _full_disk(monkeypatch, tmp_path)
    with pytest.raises(OutputError, match=r"--x .*: cannot write data.json: No space left on device"):
        atomic_write(target, "new", "--x")
    assert target.read_text() == "old" and _leftovers(tmp_path) == []


def test_staged_files_commit_all_or_none(tmp_path):
    """Two writers staging the same names in one folder, interleaved: each commit renames
    complete files of its own; nothing is left behind; a discarded stage changes nothing."""
    a, b = StagedFiles(tmp_path), StagedFiles(tmp_path)
    a.add("x.png", b"A" * 1000)
    b.add("x.png", b"B" * 2000)
    a.add("y.md", "a")
    b.add("y.md", "b")
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == []
    a.commit()
    assert (tmp_path / "x.png").read_bytes() == b"A" * 1000 and (tmp_path / "y.md").read_text() == "a"
    b.commit()
    assert (tmp_path / "x.png").read_bytes() == b"B" * 2000 and (tmp_path / "y.md").read_text() == "b"
    c = StagedFiles(tmp_path)
    c.add("x.png", b"C")
    c.discard()
    assert (tmp_path / "x.png").read_bytes() == b"B" * 2000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.png", "y.md"]


# ------------------------------------------------------------------ plan --report
@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_plan_report_on_full_disk_leaves_no_folder(tmp_path, monkeypatch):
    out = tmp_path / "new" / "report"
    (tmp_path / "new").mkdir()
    _full_disk(monkeypatch, tmp_path, names=("pareto.png",))
    code, stdout, err = run_cli("plan", "--model", "opt-1.3b", "--report", str(out))
    assert (code, stdout) == (2, "")
    assert without_progress(err) == f"llmsim: error: --report {str(out)!r}: cannot write pareto.png: No space left on device\n"
    assert not out.exists() and list((tmp_path / "new").iterdir()) == []  # the folder it made is gone


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_simulate_out_on_full_disk_leaves_no_folder(tmp_path, monkeypatch):
    out = tmp_path / "sim"
    _full_disk(monkeypatch, tmp_path, names=("report.html",))
    code, stdout, err = run_cli("simulate", "--model", "opt-1.3b", "--hardware", "a100-80g-sxm", "--rate", "5",
                                "--num-requests", "20", "--prompt-len", "64", "--output-len", "8", "--out", str(out))
    assert (code, stdout) == (2, "")
    assert without_progress(err) == f"llmsim: error: --out {str(out)!r}: cannot write report.html: No space left on device\n"
    assert list(tmp_path.iterdir()) == []


def test_failing_plan_creates_no_report_folder(tmp_path):
    out = tmp_path / "a" / "b"
    code, stdout, err = run_cli("plan", "--dtype", "int3", "--report", str(out))  # fails after the --report check
    assert (code, stdout) == (2, "") and "--dtype: 'int3'" in err
    assert list(tmp_path.iterdir()) == []


def test_two_concurrent_reports_into_one_folder_leave_complete_files(tmp_path):
    out = tmp_path / "shared"
    args = [sys.executable, "-m", "llmsim", "plan", "--model", "opt-6.7b", "--report", str(out), "--json"]
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
             for _ in range(2)]
    results = [p.communicate(timeout=240) + (p.returncode,) for p in procs]
    for stdout, stderr, code in results:
        assert code == 0 and without_progress(stderr) == "", stderr
        assert json.loads(stdout)["report"]["html"] == str(out / "report.html")
    _complete_report(out)
    assert _leftovers(out) == []


# ------------------------------------------------------------------ validate --record on a full disk
@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_record_on_full_disk_prints_the_measurement_first(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    cfg = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
           "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 256, "max_position_embeddings": 128,
           "torch_dtype": "float32"}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    rec = tmp_path / "records"
    _full_disk(monkeypatch, rec, names=(".json.",))  # the record itself; its profile copy gets written
    code, out, err = run_cli("validate", "--model", str(tmp_path / "config.json"), "--hardware", "cpu-2core",
                             "--prompt-len", "8", "--gen-len", "2", "--gpu-batch-size", "2", "--num-gpu-batches", "1",
                             "--record", str(rec), "--json")
    assert code == 2
    assert err.count("\n") == 1 and err.startswith(f"llmsim: error: --record {str(rec)!r}: cannot write ")
    assert err.endswith(".json: No space left on device\n")
    d = json.loads(out)  # the measurement reached stdout before the error
    assert d["measured"]["throughput_tok_s"] > 0 and d["record"] is None
    assert "No space left on device" in d["record_error"]
    assert [p.name for p in rec.glob("*.json")] == [] and _leftovers(rec) == []
    assert (rec / "profiles" / "cpu-2core.yaml").is_file()


# ------------------------------------------------------------------ Ctrl-C
def _llmsim_with_hook(hook: str, args: list[str]) -> subprocess.Popen:
    """``python -m llmsim ARGS`` in a process where ``hook`` (Python source) ran first."""
    code = textwrap.dedent(hook) + textwrap.dedent(f"""
        import runpy, sys
        sys.argv = ["llmsim", *{args!r}]
        runpy.run_module("llmsim", run_name="__main__")
    """)
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=ENV, cwd=ROOT)


# Mark the moment a phase starts in a file, then wait there: the test sends SIGINT once the
# mark exists, so the signal lands inside that phase on any machine.
_PAUSE_AT = """
    import os, time, importlib
    def pause_at(module, name, mark):
        mod = importlib.import_module(module)
        obj, attr = mod, name.split(".")
        for a in attr[:-1]:
            obj = getattr(obj, a)
        real = getattr(obj, attr[-1])
        def wrapper(*a, **k):
            open(mark, "w").close()
            time.sleep(60)
            return real(*a, **k)
        setattr(obj, attr[-1], wrapper)
"""


@pytest.mark.parametrize("module,name", [("simulator.search", "search"),
                                         ("matplotlib.figure", "Figure.savefig")],
                         ids=["during search", "during plotting"])
def test_ctrl_c_prints_one_line_exits_130_writes_nothing(tmp_path, module, name):
    out, mark = tmp_path / "report", tmp_path / "mark"
    hook = textwrap.dedent(_PAUSE_AT) + f"\npause_at({module!r}, {name!r}, {str(mark)!r})\n"
    p = _llmsim_with_hook(hook, ["plan", "--model", "opt-1.3b", "--report", str(out)])
    t0 = time.monotonic()
    while not mark.exists():
        assert p.poll() is None, p.communicate()
        assert time.monotonic() - t0 < 120, "the phase never started"
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    stdout, stderr = p.communicate(timeout=60)
    assert (p.returncode, stdout, without_progress(stderr)) == (130, "", "llmsim: interrupted\n")
    assert not out.exists()


def test_ctrl_c_swallowed_by_a_library_still_exits_130(tmp_path):
    """A library that catches BaseException (or a finalizer, where Python drops exceptions)
    swallows the Interrupted raised by the handler while plotting: the run must still stop
    before committing any file, print one line and exit 130."""
    out = tmp_path / "report"
    hook = """
        import os, signal, time, matplotlib.figure
        real = matplotlib.figure.Figure.savefig
        def savefig(self, *a, **k):
            try:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.5)
            except BaseException:
                pass  # swallowed
            return real(self, *a, **k)
        matplotlib.figure.Figure.savefig = savefig
    """
    p = _llmsim_with_hook(hook, ["plan", "--model", "opt-1.3b", "--report", str(out)])
    stdout, stderr = p.communicate(timeout=120)
    assert (p.returncode, stdout, without_progress(stderr)) == (130, "", "llmsim: interrupted\n")
    assert not out.exists()


def test_ctrl_c_on_a_plain_plan_process(tmp_path):
    """The real command, no hooks, interrupted one second in: one line and 130 (or, on a
    machine fast enough to finish first, exit 0 with the whole report); never a traceback
    and never a partial report."""
    out = tmp_path / "report"
    p = subprocess.Popen([sys.executable, "-m", "llmsim", "plan", "--report", str(out)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=ENV)
    time.sleep(1.0)
    p.send_signal(signal.SIGINT)
    stdout, stderr = p.communicate(timeout=120)
    if p.returncode == 130:
        assert (stdout, without_progress(stderr)) == ("", "llmsim: interrupted\n")
        assert not out.exists() or (_complete_report(out) is None and _leftovers(out) == [])
    else:
        assert p.returncode == 0 and without_progress(stderr) == "" and "recommended:" in stdout
        _complete_report(out)
