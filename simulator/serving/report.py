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
import os
import tempfile
from pathlib import Path

import numpy as np

from simulator.serving import metrics

_UMASK = os.umask(0)
os.umask(_UMASK)


def parquet_available() -> bool:
    """pandas writes parquet through pyarrow, an optional package: CSV only without it."""
    import importlib.util
    return importlib.util.find_spec("pyarrow") is not None


def _atomic(path: Path, write) -> None:
    """Write through ``write(tmp_path)`` to a unique temporary name in the same folder,
    then rename over ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix or ".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes it private; give it the usual mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _text(path: Path, text: str) -> None:
    def w(tmp):
        with open(tmp, "w") as f:
            f.write(text)
    _atomic(path, w)


def plot_latency_cdf(result, path: Path) -> None:
    """Empirical CDFs of TTFT, TPOT and E2E over the requests."""
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
    _atomic(path, lambda tmp: fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png"))
    plt.close(fig)


def plot_occupancy(result, path: Path) -> None:
    """KV blocks used over time per server, the capacity line, preemptions as ticks."""
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
    _atomic(path, lambda tmp: fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png"))
    plt.close(fig)


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


def _html(md: str, outdir: Path) -> str:
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
            data = base64.b64encode((outdir / name).read_bytes()).decode()
            out.append(f'<img alt="{html.escape(name)}" src="data:image/png;base64,{data}">')
        elif line.startswith("- "):
            out.append(f"<p>&bull; {html.escape(line[2:]).replace('**', '')}</p>")
        elif line.strip():
            out.append(f"<p>{html.escape(line)}</p>")
    return ("<!doctype html><html><head><meta charset='utf-8'><title>llmsim simulate</title><style>"
            "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
            "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px}img{max-width:100%}"
            "</style></head><body>" + "\n".join(out) + "</body></html>")


def write_outputs(result, summary: dict, outdir) -> dict:
    """Write every file of the module docstring into ``outdir``; returns their paths."""
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    df = metrics.table(result)
    files = {"requests_csv": out / "requests.csv"}
    _atomic(files["requests_csv"], lambda tmp: df.to_csv(tmp, index=False))
    if parquet_available():
        files["requests_parquet"] = out / "requests.parquet"
        _atomic(files["requests_parquet"], lambda tmp: df.to_parquet(tmp, index=False))
    import pandas as pd
    occ = pd.DataFrame(result.series)
    files["occupancy_csv"] = out / "occupancy.csv"
    _atomic(files["occupancy_csv"], lambda tmp: occ.to_csv(tmp, index=False))
    files["summary_json"] = out / "summary.json"
    _text(files["summary_json"], json.dumps(summary, indent=2, default=float) + "\n")
    plot_latency_cdf(result, out / "latency_cdf.png")
    plot_occupancy(result, out / "occupancy.png")
    images = {"Latency CDFs": "latency_cdf.png", "KV cache occupancy over time": "occupancy.png"}
    md = _markdown(summary, images, [p.name for p in files.values()])
    _text(out / "report.md", md)
    _text(out / "report.html", _html(md, out))
    paths = {k: str(v) for k, v in files.items()}
    paths.update({"latency_cdf": str(out / "latency_cdf.png"), "occupancy": str(out / "occupancy.png"),
                  "markdown": str(out / "report.md"), "html": str(out / "report.html")})
    return paths
