"""The bodies of ``llmsim validate`` (imported by the command only when it runs: it needs torch)."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time

from llmsim.common import build_policy, check_output_dir, check_writable_dir, console, count_flag, load_inputs, print_json
from simulator.errors import LlmsimError
from validate import harness


def _resolve_device(device: str) -> str:
    import re

    import torch
    if not re.fullmatch(r"auto|cpu|cuda(:[0-9]{1,4})?", device):
        raise LlmsimError(f"--device: {device!r} is not one of auto, cpu, cuda, cuda:N")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise LlmsimError(f"--device {device}: no CUDA device is usable here (torch {torch.__version__}); use --device cpu")
    if device.startswith("cuda:") and int(device[5:]) >= torch.cuda.device_count():
        raise LlmsimError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s) "
                          f"(cuda:0..cuda:{torch.cuda.device_count() - 1})")
    return device


@contextlib.contextmanager
def _workdir(offload_dir: str | None):
    if offload_dir is not None:
        check_writable_dir(offload_dir, "--offload-dir")
        yield offload_dir
        return
    # Beside the current directory rather than /tmp: /tmp is often RAM-backed, which would
    # make the "disk" tier a page cache.
    with tempfile.TemporaryDirectory(prefix=".llmsim-validate-", dir=os.getcwd()) as d:
        yield d


MAX_THREADS = 4096
MAX_REPEATS = 1000


def case_command(model, hardware, prompt_len, gen_len, num_sequences, policy_flags, dtype, use_plan, device, threads,
                 repeats, offload_dir, record, as_json) -> int:
    """One case on the executor against its prediction. Every flag is checked before the
    run; when the record cannot be written after it, the measurement is printed first (JSON
    with --json) and the error follows (one line, exit 2): a measurement is never lost."""
    from simulator.policy import Workload

    if hardware is None:
        raise LlmsimError("--hardware: give the profile of this machine (`llmsim profile` measures one)")
    spec, hw = load_inputs(model, hardware)
    dev = _resolve_device(device)
    workload = Workload(prompt_len, gen_len, num_sequences)
    count_flag(repeats, "--repeats", MAX_REPEATS)
    count_flag(threads, "--threads", MAX_THREADS)
    if record is not None:
        check_output_dir(record, "--record")  # before the run, which a bad folder would waste
    if use_plan:
        from simulator.headroom import Headroom, with_headroom
        from simulator.search import SearchSpace, _default_dtype, search
        plan = search(spec, with_headroom(hw, Headroom()), workload,  # plan's default margin
                      space=SearchSpace(dtype=dtype or _default_dtype(spec, hw)), compare=False)
        if not plan.feasible:
            raise LlmsimError(f"--plan: no feasible policy for {spec.name} on {hw.name}: {plan.reason}")
        policy = plan.policy
    else:
        policy = build_policy(**policy_flags, dtype=dtype or ("fp32" if dev == "cpu" else "fp16"))
    import torch
    if threads is not None:
        torch.set_num_threads(threads)
    elif hw.device_is_host and hw.cpu_threads:
        torch.set_num_threads(hw.cpu_threads)  # compute as the profile was measured
    spec = spec.with_(dtype=policy.dtype)
    with _workdir(offload_dir) as wd:
        res = harness.run_case(spec, workload, policy, hw, dev, wd, repeats=repeats)
    out = {"case": {"model": spec.name, "hardware": hw.name, "device": dev, "workload": workload.to_dict(),
                    "policy": res["policy"].to_dict()},
           "measured": {k: v for k, v in res["measured"].items() if k != "bandwidth"}, "predicted":
           {k: v for k, v in res["predicted"].items() if k != "breakdown"}, "errors": res["errors"],
           "components": res["components"], "bandwidth": res["measured"].get("bandwidth")}
    failure = None
    if record is not None:
        rec = harness.make_record(f"{spec.name}", spec, workload, res["policy"], dev, hw.name,
                                  f"profiles/{hw.name}.yaml", res["measured"], res["estimate"],
                                  _machine(dev), _versions(), res["run"].get("notes"))
        try:
            out["record"] = str(harness.write_record(rec, record, hw.path, label="--record"))
        except LlmsimError as e:
            failure = e
            out["record"] = None
            out["record_error"] = str(e)
    if as_json:
        print_json(out)
    else:
        _print_case(out)
    if failure is not None:
        sys.stdout.flush()
        raise failure
    return 0


def _machine(device: str) -> dict:
    import platform

    import torch
    out = {"hostname": platform.node(), "cpu": platform.processor() or platform.machine(), "device": device}
    if device.startswith("cuda"):
        out["gpu"] = torch.cuda.get_device_name()
    return out


def _versions() -> dict:
    import platform

    import torch
    from importlib.metadata import version
    return {"python": platform.python_version(), "torch": torch.__version__, "llmsim": version("llmsim"),
            "cuda": torch.version.cuda}


def _print_case(out: dict) -> None:
    from rich.table import Table

    from simulator.units import format_duration
    c = out["case"]
    con = console()
    con.print(f"[bold]{c['model']}[/] on {c['device']} (profile {c['hardware']}) · prompt {c['workload']['prompt_len']}, "
              f"gen {c['workload']['gen_len']}")
    t = Table(title="predicted vs measured", header_style="bold")
    for col in ("", "measured", "predicted", "error"):
        t.add_column(col, justify="right" if col else "left")
    for key, label, fmt in (("prefill_latency_s", "prefill", format_duration), ("decode_latency_s", "decode", format_duration),
                            ("throughput_tok_s", "throughput", lambda v: f"{v:.2f} tok/s")):
        m, p, e = out["measured"].get(key), out["predicted"].get(key), out["errors"].get(key)
        t.add_row(label, fmt(m) if m is not None else "-", fmt(p) if p is not None else "-",
                  f"{e:+.1%}" if e is not None else "-")
    con.print(t)
    t = Table(title="busy time per phase and component", header_style="bold")
    for col in ("phase", "component", "measured", "predicted", "error"):
        t.add_column(col, justify="left" if col in ("phase", "component") else "right")
    for r in out["components"]:
        t.add_row(r["phase"], r["component"], format_duration(r["measured_s"]) if r["measured_s"] is not None else "-",
                  format_duration(r["predicted_s"]) if r["predicted_s"] is not None else "-",
                  f"{r['error']:+.1%}" if r["error"] is not None else "-")
    con.print(t)
    bw = out.get("bandwidth") or {}
    for lane, row in (bw.get("lanes") or {}).items():
        if row.get("bytes_per_step"):
            line = f"decode {lane}: {row['bytes_per_step'] / 1e6:.1f} MB/step at {row['achieved_bytes_per_s'] / 1e9:.2f} GB/s"
            if row.get("bound_bytes_per_s"):
                line += f" = {row['fraction_of_bound']:.0%} of {row['bound_bytes_per_s'] / 1e9:.2f} GB/s"
            con.print(line)
    if out.get("record"):
        con.print(f"record: {out['record']}")


def suite_command(name: str, as_json: bool, offload_dir: str | None, record: str | None = None) -> int:
    """``llmsim validate --suite ci``: exit 0 passed, 1 a fidelity failure, 3 too busy to measure."""
    from llmsim import suites
    if name == "serving":
        return serving_suite_command(as_json, offload_dir)
    if name != "ci":
        raise LlmsimError(f"--suite: {name!r} is not a suite (available: ci, serving)")
    if record is not None:
        check_writable_dir(record, "--record")
    t0 = time.perf_counter()

    def progress(text: str) -> None:
        sys.stderr.write(f"[{time.perf_counter() - t0:5.0f} s] {text}\n")

    with _workdir(offload_dir) as wd:
        res = suites.run_ci_suite(wd, progress=progress, record_dir=record)
    if as_json:
        print_json(res)
    else:
        _print_suite(console(), res)
    if res["verdict"] == "too_busy":
        sys.stderr.write(f"llmsim: the machine was too busy to measure: {res['too_busy']}; "
                         f"exit {res['exit_code']} (not a fidelity verdict)\n")
    return res["exit_code"]


def serving_suite_command(as_json: bool, offload_dir: str | None) -> int:
    """``llmsim validate --suite serving``: the executor's continuous batching against the
    simulation (llmsim/serving_suite.py). Exit 0 passed, 1 a fidelity failure, 3 too busy."""
    from llmsim import serving_suite
    t0 = time.perf_counter()

    def progress(i, n, case):
        sys.stderr.write(f"[{time.perf_counter() - t0:5.0f} s] [{i + 1}/{n}] {case}\n")

    with _workdir(offload_dir) as wd:
        res = serving_suite.run_serving_suite(wd, progress=progress)
    if as_json:
        print_json(res)
    else:
        from rich.table import Table
        t = Table(title=f"serving suite: {res['n']} cases, profile {res['profile']['name']}", header_style="bold")
        for col in ("case", "metric", "measured", "predicted", "error"):
            t.add_column(col, justify="left" if col in ("case", "metric") else "right")
        for c in res["cases"]:
            for key, err in c["errors"].items():
                t.add_row(c["name"], key, f"{c['measured'][key]:.4g}", f"{c['predicted'][key]:.4g}", f"{err:+.1%}")
        console().print(t)
        misses = sum(abs(e) > (res["throughput_limit"] if k == "throughput_tok_s" else res["latency_limit"])
                     for c in res["cases"] if c["counted"] for k, e in c["errors"].items())
        verdict = ("[yellow]too busy to measure[/]" if res["too_busy"] else
                   "[green]passed[/]" if res["passed"] else "[red]failed[/]")
        console().print(f"{misses} figure(s) outside the gates (latency {res['latency_limit']:.0%}, throughput "
                        f"{res['throughput_limit']:.0%}; {serving_suite.REPEATS} streams pooled per case): "
                        f"{verdict}")
        for line in res["events"]:
            sys.stderr.write(f"note: {line}\n")
    if res["too_busy"]:
        sys.stderr.write(f"llmsim: the machine was too busy to measure the serving suite ({res['too_busy_reason']}); "
                         "exit 3 (not a fidelity verdict)\n")
        return 3
    return 0 if res["passed"] else 1


def _print_suite(con, res: dict) -> None:
    from rich.table import Table
    t = Table(title=f"CI suite: {res['n']} cases, profile {res['profile']['name']}", header_style="bold")
    for col in ("case", "measured tok/s", "predicted tok/s", "error", "bottleneck"):
        t.add_column(col, justify="left" if col in ("case", "bottleneck") else "right")
    for c in res["cases"]:
        t.add_row(c["name"], f"{c['measured_throughput_tok_s']:.1f}", f"{c['predicted_throughput_tok_s']:.1f}",
                  f"{c['error']:+.1%}", c["bottleneck"])
    con.print(t)
    verdict = {"passed": "[green]passed[/]", "failed": "[red]failed[/]",
               "too_busy": "[yellow]too busy to measure[/]"}[res["verdict"]]
    if not res["cases"]:
        con.print(f"no case measured (limits: median |error| {res['median_limit']:.0%}, max "
                  f"{res['max_limit']:.0%}): {verdict}")
        return
    con.print(f"median |error| {res['median_abs_error']:.1%} (limit {res['median_limit']:.0%}), max |error| "
              f"{res['max_abs_error']:.1%} (limit {res['max_limit']:.0%}): {verdict}")


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def check_records_command(records: str, as_json: bool) -> int:
    res = harness.check_records(records)
    if as_json:
        print_json(res)
    else:
        from rich.markup import escape
        from rich.table import Table
        con = console()
        t = Table(title=f"records in {escape(records)}: re-predicted with today's cost model", header_style="bold")
        for col in ("record", "engine", "measured tok/s", "predicted now", "predicted then", "error"):
            t.add_column(col, justify="left" if col in ("record", "engine") else "right")
        for r in res["records"]:
            metric = r.get("metric", "throughput_tok_s")
            measured = r["measured_throughput_tok_s"]
            t.add_row(escape(str(r["case"])), escape(str(r.get("engine", "llmsim"))), _fmt(measured, ".2f"),
                      _fmt(r["predicted_throughput_tok_s"], ".2f"), _fmt(r["recorded_predicted_throughput_tok_s"], ".2f"),
                      _fmt(r["error"], "+.1%") + ("" if metric == "throughput_tok_s" else f" ({metric.removesuffix('_s')})"))
        con.print(t)
        for cls, g in res["by_device"].items():
            limit = "no max gate" if g["max_limit"] is None else f"limit {g['max_limit']:.0%}"
            con.print(f"{cls} records: n {g['n']}, median |error| {g['median_abs_error']:.1%} (limit "
                      f"{g['median_limit']:.0%}), max {g['max_abs_error']:.1%} ({limit}): "
                      + ("[green]passed[/]" if g["passed"] else "[red]failed[/]"))
            for line in g.get("failed_gates", []):
                con.print(f"  [red]gate[/] {escape(line)}")
    return 0 if res["passed"] else 1
