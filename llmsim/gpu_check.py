"""Every GPU check in one unattended run of at most 8 minutes (``scripts/gpu_check.sh``).

    python -m llmsim.gpu_check [--out DIR] [--dry-run] [--budget STEP=SECONDS ...]

Steps, in order, each in a process of its own with its own time budget: a step that
overruns is stopped (SIGTERM, then SIGKILL after ``KILL_GRACE_S``), reported ``stopped``,
and the next step still runs. A step that would start with less than a second left of the
whole run is ``skipped``.

| step    | budget | expected | what                                                                 |
|---------|--------|----------|----------------------------------------------------------------------|
| env     |   20 s |    ~5 s  | env.txt: nvidia-smi, versions, CPUs, memory, disk                    |
| profile |  100 s |   ~50 s  | the focused `llmsim profile --quick` of cuda:0 for the suite's models |
|         |        |          | -> <name>.yaml (h200 on an H200, else a slug of the GPU's name)      |
| check   |   40 s |   ~10 s  | the two 5% checks: pinned 1 GiB H2D, 8192^3 fp16 GEMM -> check.json  |
| cases   |  200 s |  ~160 s  | validate/gpu_suite.py's 11 cases -> records (one per case)           |
| bench   |   70 s |   ~35 s  | executor speed against PCIe and HBM bounds -> bench.json             |
| pack    |  (10 s)|    <1 s  | records.tar, summary.json                                            |

Budgets sum to 430 s; with a stop's grace per step (``KILL_GRACE_S``) and the packing the
run stays within ``TOTAL_S`` = 470 s, which also caps every step's budget (the device
tool's run is 8 minutes, after a machine start of a minute or two). Expected times: the
profile's sections at --quick with a focus (links ~10 s with its 1 GiB point, GPU ~15 s,
CPU ~15 s, disk ~5 s, CUDA start ~5 s); the cases as ``validate/gpu_suite.py`` explains;
the bench builds OPT-6.7B twice and streams 13 GB per decode step for 31 steps.

Outputs (at most 8 files, in ``--out``, default ``$OUT`` else ``./gpu-check-out``):
env.txt, <name>.yaml, check.json, bench.json, records.tar, summary.json, run.log.
records.tar holds ``<name>/*.json`` and ``<name>/profiles/<name>.yaml``: unpack it into
``validate/records/`` and copy <name>.yaml into ``hardware_profiles/data/``.
summary.json: every step's status (ok | failed | stopped | skipped), seconds and budget,
and the figures. run.log is appended while the run goes (a log: a run killed from outside
keeps what it did); every other file is written atomically. Scratch space (the disk tier,
the profiler's disk test, step results) is ``--work`` (default ``.gpu-check-work`` in the
repository root, on the machine's disk), removed at the end.

The GPU machine has no cvxpy (nor highspy, clarabel): every step refuses to import them, so
the dry run fails if a step's code path ever needs them.

``--dry-run``: the same steps on the CPU - the profile, the checks and the bench's bounds
through ``hardware_profiles.fakecuda`` with its small sizes, the cases and the bench's runs
on the executor's CPU device with two-layer models of width 128 - with short budgets, in
well under a minute on a 2-core machine (CI runs it: tests/test_gpu_check.py).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STEPS = ("env", "profile", "check", "cases", "bench")
BUDGET_S = {"env": 20, "profile": 100, "check": 40, "cases": 200, "bench": 70}
DRY_BUDGET_S = {"env": 20, "profile": 40, "check": 25, "cases": 40, "bench": 25}
TOTAL_S = 470.0
DRY_TOTAL_S = 170.0
PACK_RESERVE_S = 10.0
KILL_GRACE_S = 5.0
MAX_FILES = 8
REFUSED_IMPORTS = ("cvxpy", "highspy", "clarabel")  # not on the GPU machine
# Shipped profiles the cases fall back to when the profile step produced none.
FALLBACK_PROFILE = {False: "h100-pcie5", True: "cpu-2core"}
KNOWN_GPUS = (("H200", "h200"),)  # device-name fragment -> profile name; others: a slug of the name


# ------------------------------------------------------------------ small helpers
def profile_name_for(device_name: str) -> str:
    """The profile's name for a GPU: ``h200`` for any H200, else a slug of the device name
    without the vendor ("NVIDIA H100 80GB HBM3" -> "h100-80gb-hbm3")."""
    for fragment, name in KNOWN_GPUS:
        if fragment.lower() in device_name.lower():
            return name
    slug = re.sub(r"[^a-z0-9]+", "-", device_name.lower().replace("nvidia", "")).strip("-")
    return slug or "gpu"


def parse_budgets(items, dry_run: bool) -> dict[str, float]:
    """Step budgets (s), with ``STEP=SECONDS`` overrides. ValueError naming the flag."""
    budgets = dict(DRY_BUDGET_S if dry_run else BUDGET_S)
    for item in items or ():
        name, sep, value = item.partition("=")
        if not sep or name not in budgets:
            raise ValueError(f"--budget {item!r}: expected STEP=SECONDS with STEP one of {', '.join(STEPS)}")
        try:
            seconds = float(value)
        except ValueError:
            seconds = -1.0
        if not seconds > 0:
            raise ValueError(f"--budget {item!r}: SECONDS must be a positive number")
        budgets[name] = seconds
    return budgets


def write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj) -> None:
    write_atomic(path, json.dumps(obj, indent=2, default=str) + "\n")


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Context:
    out: Path
    work: Path
    dry_run: bool
    deadline: float = 0.0  # time.time() at which this step is stopped from outside
    profile_name: str = ""
    profile: str = ""  # path (or shipped name) of the profile the later steps use

    def left_s(self) -> float:
        return self.deadline - time.time()


# ------------------------------------------------------------------ the steps (child processes)
def _torch(ctx: Context):
    """torch for the GPU code paths: the real one, or the stand-in in a dry run."""
    import torch

    if not ctx.dry_run:
        return torch
    from hardware_profiles import fakecuda

    fakecuda.shrink(fakecuda.Permanent())
    return fakecuda.FakeTorch()


def _run(cmd: list[str], timeout_s: float = 20.0) -> str:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        return (p.stdout + p.stderr).rstrip()
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"{cmd[0]}: {type(e).__name__}: {e}"


def step_env(ctx: Context) -> dict:
    import platform

    import torch

    t = _torch(ctx)
    name = t.cuda.get_device_name(0) if t.cuda.is_available() else ""
    lines = [f"date {_utc_now()}", f"dry_run {ctx.dry_run}", f"host {platform.node()}",
             f"python {sys.version.split()[0]}", f"torch {torch.__version__} cuda {torch.version.cuda}",
             f"cuda available {t.cuda.is_available()}; device 0: {name or 'none'}", "",
             "$ nvidia-smi", _run(["nvidia-smi"]), "", "$ nproc", _run(["nproc"]), "", "$ free -g",
             _run(["free", "-g"]), "", f"$ df -h {ctx.work}", _run(["df", "-h", str(ctx.work)]), "",
             "$ uptime", _run(["uptime"]), "", "$ git rev-parse HEAD", _run(["git", "-C", str(ROOT), "rev-parse",
                                                                            "HEAD"])]
    write_atomic(ctx.out / "env.txt", "\n".join(lines) + "\n")
    return {"gpu": name, "torch": torch.__version__, "cuda": torch.version.cuda,
            "profile_name": profile_name_for(name) if name else ""}


def _suite(ctx: Context):
    from validate import gpu_suite

    return gpu_suite.cases(ctx.dry_run)


def step_profile(ctx: Context) -> dict:
    from hardware_profiles.profile import check_options, profile_machine
    from validate import gpu_suite

    t = _torch(ctx)
    suite = _suite(ctx)
    name = ctx.profile_name or profile_name_for(t.cuda.get_device_name(0))
    # The table budget leaves the rest of the step to the other sections.
    table_s = 2.0 if ctx.dry_run else max(5.0, min(30.0, 0.3 * ctx.left_s()))
    focus = suite_focus(suite, "fp16", table_budget_s=table_s, point_budget_s=0.01 if ctx.dry_run else 0.05)
    models = sorted({c.model.name for c in suite})
    note = (f"Focused profile for validate/gpu_suite.py ({', '.join(models)}) by scripts/gpu_check.sh"
            + (" --dry-run on hardware_profiles.fakecuda: the figures are this CPU's and mean nothing." if ctx.dry_run
               else "."))
    opts = check_options(str(ctx.out / f"{name}.yaml"), True, "cuda", str(ctx.work), True, focus, note)
    hw, summary = profile_machine(opts, torch=t)
    return {"name": hw.name, "path": str(opts.out), "summary": summary}


def step_check(ctx: Context) -> dict:
    from hardware_profiles import check
    from simulator.hardware import resolve_profile_path

    t = _torch(ctx)
    path = resolve_profile_path(ctx.profile)
    kw = {"h2d_bytes": 64 * 2**20, "gemm_n": 256} if ctx.dry_run else {}
    result = check.run_checks(t, t.device("cuda:0"), path, **kw)
    result["profile"] = str(path)
    write_json(ctx.out / "check.json", result)
    return {"ok": result["ok"], "rows": result["rows"]}


def step_cases(ctx: Context) -> dict:
    from simulator.hardware import load_profile
    from validate import gpu_suite

    hw = load_profile(ctx.profile)
    offload = ctx.work / "offload"
    offload.mkdir(parents=True, exist_ok=True)
    lines = ctx.work / "cases.jsonl"

    def on_row(row):
        with open(lines, "a") as f:
            f.write(json.dumps(row, default=str) + "\n")

    budget = ctx.left_s() - KILL_GRACE_S
    result = gpu_suite.run_cases(_suite(ctx), hw, hw.path, "cpu" if ctx.dry_run else "cuda", str(offload),
                                 ctx.work / "records" / hw.name, budget, on_row)
    return {"profile": hw.name, **result}


def step_bench(ctx: Context) -> dict:
    from validate.speed import run_bench
    from simulator.models import get_model
    from validate import gpu_suite

    t = _torch(ctx)
    if ctx.dry_run:
        out = run_bench(t, gpu_suite.dry_models()["opt-6.7b"], gpu_suite.DRY_WORKLOAD, "cpu", gpu_batch_size=4,
                        bound_bytes=64 * 2**20)
    else:
        out = run_bench(t, get_model("opt-6.7b"), gpu_suite.WORKLOAD, "cuda")
    write_json(ctx.out / "bench.json", out)
    return out


STEP_FUNCTIONS = {"env": step_env, "profile": step_profile, "check": step_check, "cases": step_cases,
                  "bench": step_bench}


class _RefuseImports:
    """A meta-path finder that makes ``import cvxpy`` (and friends) fail as on the GPU machine."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in REFUSED_IMPORTS:
            raise ImportError(f"{name} is not installed on the GPU machine; the GPU check must not import it")
        return None


def child_main(args) -> int:
    """Run one step in this process; its result goes to WORK/<step>.json."""
    sys.meta_path.insert(0, _RefuseImports())
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))  # run finally blocks: temp and offload files go
    ctx = Context(Path(args.out), Path(args.work), args.dry_run, args.deadline, args.profile_name, args.profile)
    if ctx.dry_run:
        import torch

        torch.set_num_threads(1)  # the stand-in shares 2 cores with others: one thread times steadily
    result = STEP_FUNCTIONS[args.step](ctx)
    write_json(ctx.work / f"{args.step}.json", result)
    return 0


# ------------------------------------------------------------------ the driver (parent process)
class Log:
    """Lines to stdout and to run.log, with the seconds since the start. run.log stops
    growing at ``MAX_LOG_BYTES`` (the device tool returns files of up to 16 MiB)."""

    MAX_LOG_BYTES = 8 * 2**20

    def __init__(self, path: Path, t0: float):
        self.t0 = t0
        self.f = open(path, "a", buffering=1)
        self.written = 0
        self.lock = threading.Lock()

    def __call__(self, line: str) -> None:
        text = f"[{time.time() - self.t0:6.1f}s] {line.rstrip()}\n"
        with self.lock:
            sys.stdout.write(text)
            sys.stdout.flush()
            if self.written + len(text) <= self.MAX_LOG_BYTES:
                self.f.write(text)
                self.written += len(text)

    def close(self):
        self.f.close()


def run_step(name: str, ctx: Context, timeout_s: float, log: Log) -> dict:
    """Run step ``name`` in a child process for at most ``timeout_s``; its status row."""
    result_file = ctx.work / f"{name}.json"
    result_file.unlink(missing_ok=True)
    ctx.deadline = time.time() + timeout_s
    cmd = [sys.executable, "-m", "llmsim.gpu_check", "--step", name, "--out", str(ctx.out), "--work",
           str(ctx.work), "--deadline", repr(ctx.deadline), "--profile-name", ctx.profile_name,
           "--profile", ctx.profile] + (["--dry-run"] if ctx.dry_run else [])
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p])}
    log(f"== {name}: budget {timeout_s:.0f} s")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            errors="replace", start_new_session=True)

    def pump():
        for line in proc.stdout:
            log(f"   {name}| {line.rstrip()}")

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    stopped = False
    try:
        rc = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        stopped = True
        _signal_group(proc, signal.SIGTERM)
        try:
            rc = proc.wait(timeout=KILL_GRACE_S)
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            rc = proc.wait()
    reader.join(timeout=2.0)
    seconds = time.perf_counter() - t0
    result = read_json(result_file) if not stopped else None
    row = {"name": name, "budget_s": round(timeout_s, 1), "seconds": round(seconds, 1), "exit": rc}
    if stopped:
        row["status"] = "stopped"
        row["detail"] = f"stopped after its budget of {timeout_s:.0f} s"
    elif rc != 0 or result is None:
        row["status"] = "failed"
        row["detail"] = f"exit status {rc}" + ("" if result is not None else ", no result")
    elif result.get("stopped_by_budget"):
        row["status"] = "stopped"
        row["detail"] = f"budget reached: {len(result['skipped'])} not run ({', '.join(result['skipped'])})"
    else:
        row["status"] = "ok"
    log(f"== {name}: {row['status']} in {seconds:.1f} s" + (f" ({row['detail']})" if "detail" in row else ""))
    return {"row": row, "result": result}


def _signal_group(proc, sig) -> None:
    try:
        os.killpg(proc.pid, sig)  # the step's own process group (start_new_session)
    except (ProcessLookupError, PermissionError):
        pass


def pack(ctx: Context, log: Log) -> dict:
    """records.tar from WORK/records (members ``<profile>/...``)."""
    records = ctx.work / "records"
    members = sorted(p for p in records.rglob("*") if p.is_file()) if records.is_dir() else []
    tmp = ctx.out / ".records.tar.tmp"
    with tarfile.open(tmp, "w") as tar:
        for p in members:
            tar.add(p, arcname=str(p.relative_to(records)))
    os.replace(tmp, ctx.out / "records.tar")
    n = sum(1 for p in members if p.suffix == ".json")
    log(f"== pack: records.tar with {n} records and {len(members) - n} profile copies")
    return {"records": n, "members": [str(p.relative_to(records)) for p in members]}


def _case_rows(ctx: Context, cases_result) -> list[dict]:
    if cases_result:
        return cases_result["rows"]
    lines = ctx.work / "cases.jsonl"  # the step was stopped from outside: what it wrote so far
    try:
        return [json.loads(x) for x in lines.read_text().splitlines() if x.strip()]
    except (OSError, ValueError):
        return []


def _tidy_out(ctx: Context, keep: set[str], log: Log) -> list[str]:
    """Remove from OUT anything that is not an output (a stopped step's temporary file), so
    at most ``MAX_FILES`` files come back."""
    for p in sorted(ctx.out.iterdir()):
        if p.name not in keep:
            log(f"removing {p.name} from the outputs (not an output of this run)")
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    return sorted(p.name for p in ctx.out.iterdir())


def _fmt_err(e) -> str:
    return "-" if e is None else f"{100 * e:+.1f}%"


def report(summary: dict) -> str:
    """The lines printed at the end (the device tool returns the output's tail)."""
    out = [f"==== gpu_check{' --dry-run' if summary['dry_run'] else ''}: GPU {summary.get('gpu') or '?'}, "
           f"profile {summary['profile'].get('name')}"
           f"{' (FALLBACK: ' + summary['profile']['fallback'] + ')' if summary['profile'].get('fallback') else ''}, "
           f"{summary['seconds']:.0f} s of {summary['total_budget_s']:.0f}"]
    out.append(f"{'step':8s} {'status':8s} {'s':>6s} {'budget':>6s}  detail")
    for r in summary["steps"]:
        out.append(f"{r['name']:8s} {r['status']:8s} {r['seconds']:6.1f} {r['budget_s']:6.0f}  {r.get('detail', '')}")
    fig = summary["profile"].get("figures")
    if fig:
        out.append("profile: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                           for k, v in fig.items() if k in ("h2d_GBps", "d2h_GBps", "device_mem_GBps", "device_gemm_mem_GBps",
                                                                            "device_matmul_TFLOPs", "disk_read_GBps")))
    for r in (summary.get("check") or {}).get("rows", []):
        rp = f"{r['ratio_profile']:.3f}" if r.get("ratio_profile") is not None else "-"
        out.append(f"check {r['figure']}: profile/independent {rp}, profiler now/independent "
                   f"{r['ratio_now']:.3f}, independent {r['independent']:.4g} {r['unit']}: "
                   f"{'ok' if r['ok'] else 'OUTSIDE 5%'}")
    for r in summary.get("cases", []):
        if "error" in r:
            out.append(f"case {r['name']:42s} meas {r['measured_tok_s']:9.2f} pred {r['predicted_tok_s']:9.2f} tok/s "
                       f"err {_fmt_err(r['error']):>7s} {r['seconds']:5.0f} s")
        else:
            out.append(f"case {r['name']:42s} {r.get('failed') or r.get('skipped')}")
    agg = summary.get("cases_error")
    if agg:
        out.append(f"cases: {agg['n']} recorded, median |err| {100 * agg['median_abs']:.1f}%, "
                   f"max {100 * agg['max_abs']:.1f}%")
    b = summary.get("bench") or {}
    if "weight_streaming" in b:
        ws, ag = b["weight_streaming"], b["all_gpu"]
        out.append(f"bench {b['model']}: weight streaming {ws['fraction_of_h2d']:.2f} of pinned H2D "
                   f"({ws['achieved_bytes_per_s'] / 1e9:.1f} of {b['h2d_pinned_bytes_per_s'] / 1e9:.1f} GB/s, target "
                   f"{ws['target']:.2f}); all on GPU {ag['fraction_of_hbm']:.2f} of HBM "
                   f"({ag['achieved_bytes_per_s'] / 1e12:.2f} of {b['hbm_bytes_per_s'] / 1e12:.2f} TB/s, target "
                   f"{ag['target']:.2f})")
    out.append(f"files ({len(summary['files'])}): {' '.join(summary['files'])}")
    return "\n".join(out)


def driver_main(args) -> int:
    t0 = time.time()
    dry = args.dry_run
    try:
        budgets = parse_budgets(args.budget, dry)
    except ValueError as e:
        sys.stderr.write(f"error: {e}\n")
        return 2
    out = Path(args.out or os.environ.get("OUT") or ROOT / "gpu-check-out").resolve()
    out.mkdir(parents=True, exist_ok=True)
    stale = [p.name for p in out.iterdir()]
    if stale:
        sys.stderr.write(f"error: --out {str(out)!r} is not empty ({', '.join(stale[:5])}); give an empty folder\n")
        return 2
    work = Path(args.work).resolve() if args.work else \
        (Path(tempfile.mkdtemp(prefix="gpu-check-work-")) if dry else ROOT / ".gpu-check-work")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    total = args.total_s or (DRY_TOTAL_S if dry else TOTAL_S)
    log = Log(out / "run.log", t0)
    ctx = Context(out, work, dry, profile_name=args.profile_name or "")
    log(f"gpu_check{' --dry-run' if dry else ''}: out {out}, work {work}, total budget {total:.0f} s, "
        f"budgets {budgets}")
    rows, results = [], {}
    summary = {"started_utc": _utc_now(), "dry_run": dry, "total_budget_s": total, "budgets_s": budgets}
    no_gpu = None
    try:
        for name in STEPS:
            left = total - (time.time() - t0) - PACK_RESERVE_S - KILL_GRACE_S
            timeout = min(budgets[name], left)
            why = no_gpu or (f"no time left of the run's {total:.0f} s" if timeout < 1.0 else None)
            if why:
                rows.append({"name": name, "status": "skipped", "budget_s": budgets[name], "seconds": 0.0,
                             "detail": why})
                log(f"== {name}: skipped ({why})")
                continue
            if name in ("check", "cases") and not ctx.profile:
                ctx.profile = _choose_profile(ctx, results.get("profile"), summary, log)
            r = run_step(name, ctx, timeout, log)
            rows.append(r["row"])
            results[name] = r["result"]
            if name == "env" and r["result"]:
                summary["gpu"] = r["result"]["gpu"]
                ctx.profile_name = ctx.profile_name or r["result"]["profile_name"]
                if not r["result"]["gpu"]:
                    no_gpu = "no CUDA device on this machine (see env.txt); --dry-run runs the check on the CPU"
                    rows[-1].update(status="failed", detail=no_gpu)
        t_pack = time.perf_counter()
        try:
            packed = pack(ctx, log)
            rows.append({"name": "pack", "status": "ok", "budget_s": PACK_RESERVE_S,
                         "seconds": round(time.perf_counter() - t_pack, 1), "detail": f"{packed['records']} records"})
        except OSError as e:
            rows.append({"name": "pack", "status": "failed", "budget_s": PACK_RESERVE_S,
                         "seconds": round(time.perf_counter() - t_pack, 1), "detail": f"{type(e).__name__}: {e}"})
        if not ctx.profile:
            ctx.profile = _choose_profile(ctx, results.get("profile"), summary, log)
        if results.get("profile"):
            summary["profile"]["profiler"] = results["profile"]["summary"]
        summary["steps"] = rows
        summary["check"] = results.get("check")
        summary["cases"] = _case_rows(ctx, results.get("cases"))
        errs = [abs(r["error"]) for r in summary["cases"] if r.get("error") is not None]
        if errs:
            summary["cases_error"] = {"n": len(errs), "median_abs": statistics.median(errs), "max_abs": max(errs)}
        summary["bench"] = results.get("bench")
        summary["seconds"] = round(time.time() - t0, 1)
        keep = {"env.txt", f"{summary['profile'].get('name')}.yaml", "check.json", "bench.json", "records.tar",
                "summary.json", "run.log"}
        summary["files"] = sorted(set(_tidy_out(ctx, keep, log)) | {"summary.json"})
        write_json(out / "summary.json", summary)
        for line in report(summary).splitlines():
            log(line)
    finally:
        log.close()
        shutil.rmtree(work, ignore_errors=True)
    return 1 if any(r["status"] == "failed" for r in rows) else 0


def _choose_profile(ctx: Context, profiled: dict | None, summary: dict, log: Log) -> str:
    """The profile the later steps use: the one the profile step wrote (``profiled``, its
    result), else a shipped one."""
    from simulator.errors import LlmsimError
    from simulator.hardware import load_profile

    path = Path(profiled["path"]) if profiled else None
    if path is not None and path.is_file():
        try:
            hw = load_profile(path)
            summary["profile"] = {"name": hw.name, "file": path.name, "fallback": None, "figures": hw.summary()}
            return str(path)
        except LlmsimError as e:
            log(f"the profile step's {path.name} does not load: {e}")
    fallback = FALLBACK_PROFILE[ctx.dry_run]
    hw = load_profile(fallback)
    summary["profile"] = {"name": hw.name, "file": None, "figures": hw.summary(),
                          "fallback": f"no measured profile; predictions use the shipped {fallback}"}
    log(f"no measured profile: the later steps use the shipped {fallback}")
    return str(hw.path)


def suite_focus(suite, dtype: str = "fp16", extra_models=(), table_budget_s: float = 30.0,
          point_budget_s: float = 0.05):
    """The focused profile for ``suite`` (``hardware_profiles.shapes.Focus``): its models'
    GEMMs at exactly the m values it runs (decode: the GPU batch; prefill: batch x prompt;
    the LM head: the batch), decode attention over its batches x (prompt, middle, end of
    generation), in ``dtype``; no CPU GEMM tables (beside a GPU the CPU computes only
    attention)."""
    from hardware_profiles.shapes import Focus

    models = {c.model.name: c.model for c in suite}
    models.update({m.name: m for m in extra_models})
    batches = sorted({c.policy.gpu_batch_size for c in suite})
    prompts = sorted({c.workload.prompt_len for c in suite})
    s, n = prompts[0], max(c.workload.gen_len for c in suite)
    m_values = sorted(set(batches) | {b * p for b in batches for p in prompts})
    return Focus.of(list(models.values()), m_values=tuple(m_values), head_m_values=tuple(batches), dtypes=(dtype,),
                    batches=tuple(batches), contexts=(s, s + n // 2, s + n), op_batch=max(batches),
                    point_budget_s=point_budget_s, table_budget_s=table_budget_s, cpu_gemm_tables=False)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m llmsim.gpu_check", description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None, help="output folder (default $OUT, else ./gpu-check-out); must be empty")
    p.add_argument("--work", default=None, help="scratch folder (default .gpu-check-work; a temp folder in --dry-run)")
    p.add_argument("--dry-run", action="store_true", help="on the CPU with the torch.cuda stand-in, tiny models")
    p.add_argument("--budget", action="append", default=[], metavar="STEP=SECONDS",
                   help=f"override one step's budget (steps: {', '.join(STEPS)}); repeatable")
    p.add_argument("--total-s", type=float, default=None, help="budget of the whole run (default 470; dry 170)")
    p.add_argument("--profile-name", default=None, help="name of the profile (default: from the GPU's name)")
    p.add_argument("--step", choices=STEPS, default=None, help=argparse.SUPPRESS)
    p.add_argument("--deadline", type=float, default=0.0, help=argparse.SUPPRESS)
    p.add_argument("--profile", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.step:
        return child_main(args)
    return driver_main(args)


if __name__ == "__main__":
    sys.exit(main())
