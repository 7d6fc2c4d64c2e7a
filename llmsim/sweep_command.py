"""``llmsim sweep SPEC.yaml --out DIR``: a sweep's cells on Dask (``simulator.sweeps``).

``register(app)`` adds the command to the typer app of ``llmsim.cli``.

Why Dask lives here and not in ``simulator/``: the planner core is a library of pure
functions that every command, the executor and the notebooks import; a cluster is a
runtime with processes, sockets, logging and signals of its own, a concern of the program
that drives it (like the progress bar). So ``simulator.sweeps`` holds the spec, the pure
cell function, the checkpoint and the table, and runs cells through any ``compute``
(in-process in the tests); this module maps them over Dask. Dask is still a core
dependency, because ``llmsim sweep`` is part of the core install.

Cells go to a ``distributed.LocalCluster`` (``--workers N`` processes, one thread each: the
cell function is single-threaded numpy and HiGHS, and processes avoid the GIL) or to a
running scheduler (``--scheduler ADDRESS``, whose workers must have llmsim installed). The
loaded models, profiles and traces are scattered once to every worker; each cell is one
task, keyed by its ``cell_id``; rows come back as they finish (``as_completed``).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Optional

import typer

from llmsim.common import print_json

WORKER_FAILED = "worker"


def _cluster_client(scheduler: str | None, workers: int):
    """A Client to ``scheduler``, or to a new LocalCluster of ``workers`` processes (closed
    with the client)."""
    from distributed import Client, LocalCluster
    from simulator.errors import LlmsimError
    if scheduler is not None:
        try:
            return Client(scheduler, timeout=10, set_as_default=False)
        except (OSError, TimeoutError, ValueError) as e:
            raise LlmsimError(f"--scheduler {scheduler}: cannot connect: {' '.join(str(e).split())}") from None
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                           silence_logs=logging.ERROR)
    client = Client(cluster, set_as_default=False)
    client._llmsim_cluster = cluster  # closed with the client (``_close``)
    return client


def _close(client) -> None:
    cluster = getattr(client, "_llmsim_cluster", None)
    client.close()
    if cluster is not None:
        cluster.close()


def dask_compute(scheduler: str | None = None, workers: int | None = None, timing: dict | None = None):
    """A ``compute`` for ``simulator.sweeps.run_sweep`` that runs each cell as a Dask task.
    ``timing`` (a dict) receives ``cluster_start_s`` and ``compute_s``."""

    def compute(sweep, cells):
        from distributed import as_completed
        from simulator.sweeps import failed_row, run_cell
        t0 = time.perf_counter()
        n = max(1, min(workers or os.cpu_count() or 1, len(cells)))
        client = _cluster_client(scheduler, n)
        if timing is not None:
            timing["workers"] = len(client.scheduler_info().get("workers", {})) if scheduler else n
        try:
            t1 = time.perf_counter()
            models = {k: client.scatter(v, broadcast=True) for k, v in sweep.models.items()}
            profiles = {k: client.scatter(v, broadcast=True) for k, v in sweep.profiles.items()}
            traces = {k: client.scatter(v, broadcast=True) for k, v in sweep.traces.items()}
            futures = {}
            for c in cells:
                trace = getattr(c.workload, "trace", None)
                f = client.submit(run_cell, c, models[c.model], profiles[c.hardware],
                                  traces[trace] if trace else None, key=f"llmsim-sweep-cell-{c.cell_id}", pure=False)
                futures[f] = c
            for f in as_completed(list(futures), loop=client.loop):
                c = futures.pop(f)
                try:
                    row = f.result()
                except Exception as e:  # the worker died (KilledWorker) or the task was lost: not checkpointed
                    row = failed_row(c, f"worker failed: {type(e).__name__}: {e}", WORKER_FAILED)
                f.release()
                yield row
            if timing is not None:
                timing.update(cluster_start_s=t1 - t0, compute_s=time.perf_counter() - t1)
        finally:
            for f in futures:
                f.cancel()
            _close(client)

    return compute


class SweepProgress:
    """A rich progress bar on stderr when it is a terminal; otherwise a line at the start,
    at every 5% of the cells and at the end (logs, CI)."""

    def __init__(self):
        from rich.console import Console
        self._con = Console(stderr=True, highlight=False, soft_wrap=True)
        self._bar = None
        self._done = self._total = 0
        self._t0 = time.perf_counter()

    def begin(self, total: int, reused: int) -> None:
        self._done, self._total = reused, total
        if self._con.is_terminal:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)
            from rich.table import Column
            self._bar = Progress(TextColumn("llmsim sweep"), BarColumn(bar_width=24), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                                 TextColumn("{task.description}", table_column=Column(
                                     no_wrap=True, overflow="ellipsis", ratio=1)),  # the rest of the line
                                 console=self._con, expand=True)
            self._bar.start()
            self._task = self._bar.add_task("", total=total, completed=reused)
        else:
            self._con.print(f"llmsim sweep: {total} cells, {reused} from the checkpoint, {total - reused} to run")

    def cell(self, row: dict) -> None:
        self._done += 1
        what = f"{row['model']} on {row['hardware']}, {row['engine']}, {row['workload']}"
        if self._bar is not None:
            self._bar.update(self._task, advance=1, description=what)
            return
        step = max(1, self._total // 20)
        if self._done == self._total or self._done % step == 0:
            rate = self._done / max(time.perf_counter() - self._t0, 1e-9)
            self._con.print(f"llmsim sweep: {self._done}/{self._total} cells ({100 * self._done / self._total:.0f}%), "
                            f"{rate:.2f} cells/s; last: {what}")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def sweep(
    spec: Optional[str] = typer.Argument(None, help="The sweep spec (YAML); see --schema."),
    out: Optional[str] = typer.Option(None, "--out", help="Folder of the results and the checkpoint (resumable)."),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help="Address of a running Dask scheduler "
                                                                      "(default: a local cluster)."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Local cluster: worker processes (default: "
                                                                  "the CPU count)."),
    schema: bool = typer.Option(False, "--schema", help="Print the JSON schema of a sweep spec and exit."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary (counts, files, wall time)."),
):
    """Plan (or simulate) every model x hardware x engine x workload x GPU count into one table."""
    from simulator.errors import LlmsimError
    if schema:
        from simulator.sweeps import json_schema
        print_json(json_schema())
        return
    if spec is None:
        raise LlmsimError("sweep: give the spec file (llmsim sweep SPEC.yaml --out DIR), or --schema")
    if out is None:
        raise LlmsimError("sweep: --out DIR is required (where the results and the checkpoint go)")
    if workers is not None and workers < 1:
        raise LlmsimError(f"--workers must be a positive integer, got {workers}")
    if workers is not None and scheduler is not None:
        raise LlmsimError("--workers sizes the local cluster; a --scheduler brings its own workers")
    from simulator.sweeps import load_sweep, run_sweep
    plan = load_sweep(spec)  # a bad spec raises here: nothing is written
    from llmsim.common import check_writable_dir
    check_writable_dir(out, "--out")
    timing: dict = {}
    progress = SweepProgress()
    try:
        outcome = run_sweep(plan, out, dask_compute(scheduler, workers, timing), progress)
    except OSError as e:
        raise LlmsimError(f"--out {out}: cannot write: {e.strerror or e}") from None
    finally:
        progress.close()
    summary = outcome.to_dict() | {"spec": spec, "out": out, "scheduler": scheduler or "local", "workers": 0,
                                   **timing}
    if as_json:
        print_json(summary)
        return
    _print_summary(summary)


def _print_summary(s: dict) -> None:
    from llmsim.common import console
    con = console()
    con.print(f"[bold]llmsim sweep[/]: {s['cells']} cells ({s['computed']} computed, {s['reused']} from the "
              f"checkpoint) in {s['wall_s']:.1f} s: {s['feasible']} feasible, {s['infeasible']} infeasible, "
              f"{s['refused']} refused by their engine (column error)")
    if s["failed"]:
        con.print(f"[yellow]{s['failed']} cells failed (a bug or a lost worker, column error); they are not "
                  "checkpointed: a rerun tries them again")
    con.print(f"results: {s['files']['parquet']}, {s['files']['csv']}")


def register(app: typer.Typer) -> None:
    """Add ``sweep`` to the command-line app."""
    app.command(name="sweep")(sweep)
