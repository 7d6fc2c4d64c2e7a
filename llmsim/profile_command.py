"""``llmsim profile``: measure this machine into a hardware profile.

``run()`` is the command's body (``llmsim/cli.py`` wires its flags to it); this module
also runs stand-alone, with argparse instead of typer, as
``python -m llmsim.profile_command [--out FILE] [--quick] [--device D] [--disk-dir DIR]
[--force] [--json]``. Bad flags raise ``ProfileError`` (the CLI prints one line, exit 2);
Ctrl-C writes nothing and returns 130.
"""

from __future__ import annotations

import json
import sys

from simulator.errors import LlmsimError, ProfileError

from hardware_profiles.profile import DEFAULT_OUT, check_options, profile_machine
from hardware_profiles.timing import RichReporter


MAX_THREADS = 4096


def run(out: str | None, quick: bool, device: str, disk_dir: str | None, force: bool, as_json: bool,
        threads: int | None = None) -> int:
    """Profile this machine and write the YAML profile to ``out`` (default
    ``./llmsim-profile.yaml``). ``device``: ``auto`` (or None: cuda:0 when there is a GPU,
    else cpu), ``cpu``, ``cuda`` or ``cuda:N``. ``disk_dir``: where the disk test writes its
    scratch file (default: the directory of ``out``). A progress bar goes to stderr; with
    ``as_json`` one JSON object goes to stdout, else a short table. Returns the exit code
    (0, or 130 after Ctrl-C); raises ProfileError for bad flags or a failed measurement.
    """
    opts = check_options(out, quick, device, disk_dir, force)
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= MAX_THREADS:
            raise ProfileError(f"--threads must be a positive integer (at most {MAX_THREADS}), got {threads!r}")
        import torch
        torch.set_num_threads(threads)  # every CPU figure is then measured with this many threads
    try:
        profile, summary = profile_machine(opts, make_reporter=RichReporter)
    except KeyboardInterrupt:
        sys.stderr.write(f"llmsim profile: interrupted; {opts.out} was not written\n")
        return 130
    if as_json:
        sys.stdout.write(json.dumps(summary, indent=2, default=str) + "\n")
        return 0
    _print_table(summary)
    return 0


def _print_table(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    f = summary["figures"]
    t = Table(title=f"{summary['path']} ({'quick' if summary['quick'] else 'full'} run, {summary['elapsed_s']:.0f} s)")
    t.add_column("figure")
    t.add_column("value", justify="right")
    rows = [("device", f["device"]), ("device memory", f"{f['gpu_memory_GiB']:.1f} GiB"),
            ("device memory bandwidth", f"{f['device_mem_GBps']:.1f} GB/s"),
            ("memory-bound GEMM read rate", f"{f['device_gemm_mem_GBps']:.1f} GB/s")]
    rows += [(f"{d} matmul", f"{v:.2f} TFLOP/s") for d, v in f["device_matmul_TFLOPs"].items()]
    rows += [("host->device", f"{f['h2d_GBps']:.2f} GB/s"), ("device->host", f"{f['d2h_GBps']:.2f} GB/s"),
             ("disk read (direct)", f"{f['disk_read_GBps']:.2f} GB/s"), ("disk free", f"{f['disk_GiB']:.0f} GiB")]
    for name, value in rows:
        t.add_row(name, str(value))
    for section, reason in summary["absent"].items():
        t.add_row(f"{section}", f"absent: {reason}")
    Console(highlight=False).print(t)


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point (argparse), for machines without the planner's CLI deps."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m llmsim.profile_command", description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None, help=f"profile to write (default ./{DEFAULT_OUT})")
    p.add_argument("--quick", action="store_true", help="fewer sizes and repeats: under a minute")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--disk-dir", default=None, help="directory for the disk test (default: the --out directory)")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out file")
    p.add_argument("--json", dest="as_json", action="store_true", help="print one JSON summary on stdout")
    a = p.parse_args(argv)
    try:
        return run(a.out, a.quick, a.device, a.disk_dir, a.force, a.as_json)
    except LlmsimError as e:
        sys.stderr.write(f"error: {e}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
