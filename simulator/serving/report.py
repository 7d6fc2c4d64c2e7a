"""Files of a serving simulation (``llmsim simulate --out DIR``), each written atomically:

- ``requests.csv`` (and ``requests.parquet`` when pyarrow is installed): the tidy
  per-request table (``metrics.TABLE_COLUMNS``);
- ``occupancy.csv``: per iteration end, the server, its used KV blocks, running and queued
  requests;
- ``summary.json``: the summary ``llmsim simulate --json`` prints;
- ``latency_cdf.png`` (TTFT, TPOT, E2E), ``occupancy.png`` (KV blocks used over time with
  the capacity, preemptions marked), and ``report.md`` / ``report.html`` (images inlined).
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import numpy as np

from simulator.report import figure_png
from simulator.serving import metrics

def parquet_available() -> bool:
    """pandas writes parquet through pyarrow, an optional package: CSV only without it."""
    import importlib.util
    return importlib.util.find_spec("pyarrow") is not None


def plot_latency_cdf(result, path: Path | None = None) -> bytes:
    """Empirical CDFs of TTFT, TPOT and E2E over the requests. Returns the PNG (written to
    ``path`` atomically when given)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = metrics.per_request(result)
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for ax, key, label in zip(axes, ("ttft_s", "tpot_s", "e2e_s"), ("TTFT", "TPOT", "end-to-end")):
        x = np.sort(cols[key][np.isfinite(cols[key])])
        if len(x):
            ax.plot(x, np.arange(1, len(x) + 1) / len(x), lw=1.5)
        ax.set_xlabel(f"{label} (s)")
        ax.set_ylim(0, 1.0)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("fraction of requests")
    fig.suptitle(f"{result.model} on {result.hardware}: latency CDFs ({result.req.n} requests)")
    return figure_png(fig, path)


def plot_occupancy(result, path: Path | None = None) -> bytes:
    """KV blocks used over time per server, the capacity line, preemptions as ticks. Returns
    the PNG (written to ``path`` atomically when given)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = result.series
    fig, ax = plt.subplots(figsize=(10, 3.6))
    for sid in np.unique(s["server"]):
        m = s["server"] == sid
        ax.step(s["time_s"][m], s["used_blocks"][m] / result.blocks_per_server, where="post", lw=1,
                label=f"server {sid}" if len(np.unique(s['server'])) > 1 else "KV blocks used")
    ax.axhline(1.0, color="k", ls="--", lw=1, label="capacity")
    if len(result.preemption_times):
        ax.plot(result.preemption_times, np.full(len(result.preemption_times), 1.02), "|", color="red",
                label=f"preemptions ({len(result.preemption_times)})")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("KV cache occupancy")
    ax.set_ylim(0, 1.08)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"KV cache: {result.blocks_per_server} blocks of {result.engine.block_size} tokens per server")
    return figure_png(fig, path)


def _markdown(summary: dict, images: dict, files: list[str]) -> str:
    def row(name, key):
        st = summary[key]
        cells = ["-" if st[q] is None else f"{st[q]:.4g}" for q in ("p50", "p90", "p99", "mean")]
        return f"| {name} | " + " | ".join(cells) + " |"
    lines = [f"# llmsim simulate: {summary['model']} on {summary['hardware']}", "",
             f"- engine **{summary['engine']}**, layout tp={summary['layout']['tp']} pp={summary['layout']['pp']}, "
             f"{summary['replicas']} replica(s), {summary['gpus']} GPU(s), {summary['dtype']}",
             f"- stream: {summary['stream']['source']} ({summary['num_requests']} requests)",
             f"- throughput {summary['throughput_tok_s']:.1f} tokens/s, {summary['requests_per_s']:.3f} requests/s, "
             f"goodput {summary['goodput_rps']:.3f} requests/s, {summary['preemptions']} preemptions",
             f"- KV cache: {summary['kv_cache']['blocks_per_server']} blocks per server, peak "
             f"{100 * (summary['kv_cache']['peak_used_frac'] or 0):.1f}% used",
             f"- {summary['simulated_iterations']} iterations simulated in {summary['wall_s']:.2f} s", "",
             "| seconds | p50 | p90 | p99 | mean |", "|---|---|---|---|---|",
             row("TTFT", "ttft_s"), row("TPOT", "tpot_s"), row("E2E", "e2e_s"), row("queue", "queue_s"), ""]
    for title, name in images.items():
        lines += [f"## {title}", "", f"![{title}]({name})", ""]
    lines += ["Files: " + ", ".join(f"`{f}`" for f in files), ""]
    return "\n".join(lines)


def _html(md: str, pngs: dict) -> str:
    """The Markdown subset ``_markdown`` writes, as self-contained HTML."""
    out, table = [], []
    for line in md.splitlines():
        if line.startswith("|"):
            if not set(line) <= set("|-"):
                table.append([c.strip() for c in line.strip("|").split("|")])
            continue
        if table:
            out.append("<table>" + "".join("<tr>" + "".join(f"<{'th' if k == 0 else 'td'}>{html.escape(c)}</"
                                                             f"{'th' if k == 0 else 'td'}>" for c in r) + "</tr>"
                                           for k, r in enumerate(table)) + "</table>")
            table = []
        if line.startswith("# "):
            out.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.startswith("## "):
            out.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.startswith("!["):
            name = line[line.index("(") + 1:-1]
            data = base64.b64encode(pngs[name]).decode()
            out.append(f'<img alt="{html.escape(name)}" src="data:image/png;base64,{data}">')
        elif line.startswith("- "):
            out.append(f"<p>&bull; {html.escape(line[2:]).replace('**', '')}</p>")
        elif line.strip():
            out.append(f"<p>{html.escape(line)}</p>")
    return ("<!doctype html><html><head><meta charset='utf-8'><title>llmsim simulate</title><style>"
            "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
            "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px}img{max-width:100%}"
            "</style></head><body>" + "\n".join(out) + "</body></html>")


def write_outputs(result, summary: dict, outdir, label: str = "--out") -> dict:
    """Write every file of the module docstring into ``outdir``; returns their paths. All are
    rendered in memory, written under unique temporary names and renamed together
    (``simulator.files.StagedFiles``): a failure leaves no file, and no folder it created.
    Raises ``OutputError`` naming ``label`` and the file."""
    import pandas as pd

    from simulator.files import StagedFiles, check_interrupt, check_output_dir, make_dirs, remove_created
    out = Path(outdir)
    df = metrics.table(result)
    payloads = {"requests.csv": df.to_csv(index=False)}
    if parquet_available():
        payloads["requests.parquet"] = df.to_parquet(index=False)
    payloads["occupancy.csv"] = pd.DataFrame(result.series).to_csv(index=False)
    payloads["summary.json"] = json.dumps(summary, indent=2, default=float) + "\n"
    data_files = list(payloads)
    pngs = {"latency_cdf.png": plot_latency_cdf(result), "occupancy.png": plot_occupancy(result)}
    images = {"Latency CDFs": "latency_cdf.png", "KV cache occupancy over time": "occupancy.png"}
    md = _markdown(summary, images, data_files)
    payloads.update(pngs)
    payloads["report.md"] = md
    payloads["report.html"] = _html(md, pngs)
    check_interrupt()
    created = check_output_dir(out, label)
    try:
        make_dirs(created, label)
        with StagedFiles(out, label) as staged:
            for name, data in payloads.items():
                staged.add(name, data)
    except BaseException:
        remove_created(created)
        raise
    keys = {"requests.csv": "requests_csv", "requests.parquet": "requests_parquet", "occupancy.csv": "occupancy_csv",
            "summary.json": "summary_json", "latency_cdf.png": "latency_cdf", "occupancy.png": "occupancy",
            "report.md": "markdown", "report.html": "html"}
    return {keys[name]: str(out / name) for name in payloads}
