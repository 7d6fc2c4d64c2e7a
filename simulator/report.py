"""Human-facing output: terminal tables for estimates and plans, and the capacity-planning
report (Markdown + self-contained HTML with PNG plots)."""

from __future__ import annotations

from simulator.units import format_bytes, format_duration


def placement_text(p: dict) -> str:
    """{'gpu_frac': .2, 'cpu_frac': .8, 'disk_frac': 0} -> '20/80/0'."""
    return "/".join(f"{100 * p[k]:.4g}" for k in ("gpu_frac", "cpu_frac", "disk_frac"))


def policy_text(pol: dict) -> str:
    flags = [pol["dtype"]] if pol.get("dtype") else []
    if pol["cpu_attention"]:
        flags.append("cpu attention")
    if pol["compress_weights"]:
        flags.append("4-bit weights")
    if pol["compress_cache"]:
        flags.append("4-bit cache")
    flags.append("overlap" if pol["overlap"] else "no overlap")
    if pol.get("disk_io", "direct") != "direct":
        flags.append(f"disk {pol['disk_io']}")
    par = [f"{k}={pol[k]}" for k in ("tp", "pp", "dp") if pol.get(k, 1) != 1]
    if "prefill_layout" in pol:  # partition layouts other than Megatron's (simulator.layouts)
        par.append(f"prefill {pol['prefill_layout']} · decode {pol['decode_layout']} · attention over "
                   f"{pol['attention_layout']}")
    return (f"batch {pol['gpu_batch_size']} x {pol['num_gpu_batches']} · weights {placement_text(pol['weights'])} · "
            f"cache {placement_text(pol['cache'])} · activations {placement_text(pol['activations'])} · "
            + " · ".join(flags + par))


def bound_text(hw, bottleneck: str, dtype: str = "fp16") -> str:
    """``"bottleneck h2d (links.h2d_pinned_GBps: paper)"``: the bound and where the figures
    that set it come from (``HardwareProfile.bound_sources``)."""
    if hw is None:
        return f"bottleneck {bottleneck}"
    src = hw.bound_sources(bottleneck, dtype)
    return f"bottleneck {bottleneck}" + (" (" + ", ".join(f"{k}: {v}" for k, v in src.items()) + ")" if src else "")


def print_estimate(console, est, hw=None) -> None:
    """A readable summary of one Estimate (placements shown as GPU/CPU/disk percents)."""
    from rich.table import Table

    wl = est.workload
    console.print(f"[bold]{est.model}[/] on [bold]{est.hardware}[/] · prompt {wl['prompt_len']}, "
                  f"gen {wl['gen_len']}, {est.num_sequences} sequences ({est.num_blocks} block(s) of {est.block_size})")
    console.print(f"policy: {policy_text(est.policy)}")
    if est.feasible:
        console.print("feasible: [green]yes[/]")
    else:
        console.print(f"feasible: [red]no[/] — {est.reason}")
    t = Table(show_header=True, header_style="bold")
    t.add_column("")
    t.add_column("prefill", justify="right")
    t.add_column("decode", justify="right")
    t.add_column("total", justify="right")
    t.add_row("latency", format_duration(est.prefill_latency_s), format_duration(est.decode_latency_s),
              format_duration(est.total_latency_s))
    dthr = est.decode_throughput_tok_s
    t.add_row("throughput", "", f"{dthr:.2f} tok/s" if dthr else "-", f"{est.throughput_tok_s:.2f} tok/s")
    console.print(t)
    m = Table(show_header=True, header_style="bold", title="peak memory")
    for col in ("tier", "prefill", "decode", "capacity"):
        m.add_column(col, justify="right" if col != "tier" else "left")
    for tier in ("gpu", "cpu", "disk"):
        m.add_row(tier, format_bytes(est.peak_memory_by_phase["prefill"][tier]),
                  format_bytes(est.peak_memory_by_phase["decode"][tier]), format_bytes(est.capacity_bytes[tier]))
    console.print(m)
    b = Table(show_header=True, header_style="bold",
              title=f"busy time per component ({bound_text(hw, est.bottleneck, est.policy['dtype'])})")
    for col in ("phase", "component", "resource", "time"):
        b.add_column(col, justify="right" if col == "time" else "left")
    for r in est.breakdown:
        b.add_row(r["phase"], r["component"], r["resource"], format_duration(r["time_s"]))
    console.print(b)


# ------------------------------------------------------------------ plans
def _flops_text(flop_per_s: float) -> str:
    return f"{flop_per_s / 1e12:.3g} TFLOP/s" if flop_per_s >= 1e12 else f"{flop_per_s / 1e9:.3g} GFLOP/s"


def dtype_text(plan) -> str:
    """One sentence on the plan's compute dtype, from the numbers the search used
    (``Plan.dtype_choice``): the layer-GEMM rate of each searched dtype at the plan's decode
    batch on this device (measured table, or the roofline on the profile's peak) and each
    dtype's best plan."""
    c = plan.dtype_choice
    if not c:
        return ""
    chosen, per, searched = c["chosen"], c["per_dtype"], c["searched"]
    if chosen is None:
        return f"dtype: no feasible policy in any of {', '.join(searched)}"

    def rate(d: str) -> str:
        e = per[d]
        if e["same_as"]:
            return f"the same as {e['same_as']} (identical rates and bytes)"
        src = "measured" if e["gemm_source"] == "measured" else f"roofline on its {_flops_text(e['peak_flop_per_s'])} peak"
        return f"{_flops_text(e['gemm_flop_per_s'])} ({src})"

    def best(d: str) -> str:
        e = per[d]
        if e["best_throughput_tok_s"] is None and e["bound_throughput_tok_s"] is None:
            return f"{d} does not fit"
        if c["objective"] == "throughput":
            if e["best_throughput_tok_s"] is not None:
                return f"{d} {e['best_throughput_tok_s']:.4g} tok/s"
            return f"{d} at most {e['bound_throughput_tok_s']:.4g} tok/s (upper bound; pruned)"
        if e["best_latency_s"] is not None:
            return f"{d} {format_duration(e['best_latency_s'])}"
        return f"{d} pruned by its bound"

    others = [d for d in searched if d != chosen]
    head = f"dtype {chosen}" + (" (set by --dtype)" if c["forced"] else f", the best of {', '.join(searched)} here")
    gemm = f"layer GEMMs at batch {c['gemm_m']} run at {rate(chosen)} in {chosen}"
    if others:
        gemm += " vs " + ", ".join(f"{d} {rate(d)}" for d in others)
    metric = "throughput" if c["objective"] == "throughput" else "latency"
    solved = [d for d in [chosen, *others] if not per[d]["same_as"]]
    tail = f"; best {metric}: " + ", ".join(best(d) for d in solved) if len(solved) > 1 else ""
    return f"{head}: {gemm} on {c['device']}{tail}"


def print_plan(console, plan, hw=None) -> None:
    """The plan in the terminal: recommendation, its estimate, the engines compared, search figures."""
    from rich.table import Table

    wl = plan.workload
    cons = ", ".join(f"{k} {v:g}" for k, v in plan.constraints.items() if v is not None)
    console.print(f"[bold]llmsim plan[/]: {plan.model} on {plan.hardware} · prompt {wl['prompt_len']}, "
                  f"gen {wl['gen_len']} · objective {plan.objective}" + (f" · {cons}" if cons else ""))
    if not plan.feasible:
        console.print(f"[red]no feasible policy[/]: {plan.reason}")
    else:
        e = plan.estimate
        console.print(f"recommended: {policy_text(plan.policy.to_dict())}")
        console.print(f"  {dtype_text(plan)}")
        console.print(f"  throughput {e.throughput_tok_s:.3f} tok/s (decode "
                      f"{(e.decode_throughput_tok_s or 0):.3f}) · latency {format_duration(e.total_latency_s)} for "
                      f"{e.num_sequences} sequences · {bound_text(hw, e.bottleneck, e.policy['dtype'])}")
        console.print("  peak memory " + ", ".join(
            f"{t} {format_bytes(e.peak_memory_bytes[t])} / {format_bytes(e.capacity_bytes[t])}"
            for t in ("gpu", "cpu", "disk")))
        r = plan.relaxed_estimate
        if r is not None and not plan.partition.get("improved"):
            console.print(f"  LP optimum before rounding to whole tensors/rows: {r.throughput_tok_s:.3f} tok/s "
                          f"({policy_text(plan.relaxed_policy.to_dict())})")
    t = Table(title="the best plan of each engine on this machine (same profile, each engine's schedule)",
              header_style="bold")
    for col in ("engine", "throughput", "latency", "policy"):
        t.add_column(col)
    if plan.feasible:
        t.add_row(f"{plan.engine} (plan)", f"{plan.estimate.throughput_tok_s:.3f} tok/s",
                  format_duration(plan.estimate.total_latency_s), policy_text(plan.policy.to_dict()))
    for name, (pol, est, note) in plan.comparison().items():
        if est is None:
            t.add_row(name, "-", "-", note)
        else:
            t.add_row(name, f"{est.throughput_tok_s:.3f} tok/s", format_duration(est.total_latency_s),
                      policy_text(pol.to_dict()) + (f" ({note})" if note else ""))
    console.print(t)
    part = partition_text(plan)
    if part:
        console.print(part)
        rows = plan.partition.get("evaluated") or []
        if rows:
            pt = Table(title="partition layouts at the chosen batch (arXiv 2211.05102 section 3)", header_style="bold")
            for col in ("layout", "attention", "prefill", "decode"):
                pt.add_column(col)
            for lay, att, pre, dec in _partition_rows(rows):
                pt.add_row(lay, att, pre, dec)
            console.print(pt)
    if plan.gpus > 1:
        lt = Table(title=f"best of each layout on {plan.gpus} GPUs", header_style="bold")
        for col in ("tp x pp x dp", "batch", "throughput", "latency"):
            lt.add_column(col)
        for _, r in plan.layouts().iterrows():
            lt.add_row(f"{r.tp} x {r.pp} x {r.dp}", f"{r.gpu_batch_size} x {r.num_gpu_batches}",
                       f"{r.throughput_tok_s:.3f} tok/s", format_duration(r.total_latency_s))
        console.print(lt)
    console.print(f"search: {plan.search_seconds:.3f} s, {plan.candidates_evaluated} LPs solved, "
                  f"{plan.candidates_pruned} candidates pruned by bounds, {plan.candidates_total} candidates"
                  + (f"; solver fallbacks: {len(plan.solver_fallbacks)}" if plan.solver_fallbacks else ""))
    if hw is not None and hw.source != "measured":
        console.print(f"[yellow]note[/]: {hw.name} is a {hw.source} profile; run `llmsim profile` on the machine "
                      "for measured figures")


def figure_png(fig, path=None) -> bytes:
    """The figure as PNG bytes, rendered in memory and closed; written to ``path``
    atomically (unique temporary name, then rename) when one is given."""
    import io

    import matplotlib.pyplot as plt
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)
    data = buf.getvalue()
    if path is not None:
        from simulator.files import atomic_write
        atomic_write(path, data)
    return data


def partition_text(plan) -> str:
    """``"partition layout per phase: prefill wg-xyz, decode 2d-ws, attention over batch (mesh
    4x4x4)"``: the recommended policy's layouts when the plan has several chips."""
    if plan.policy is None or plan.gpus <= 1:
        return ""
    p = plan.policy
    mesh = f" on a {plan.partition['mesh']} mesh of tp {p.tp}" if plan.partition.get("mesh") and p.tp > 1 else ""
    extra = " (Megatron's 1D split)" if p.megatron_layout else ""
    return (f"  partition layout per phase: prefill {p.prefill_layout}, decode {p.decode_layout}, attention over "
            f"{p.attention_layout}{extra}{mesh}")


def _partition_rows(rows: list) -> list[tuple[str, str, str, str]]:
    """(layout, attention, prefill time, decode time) of the layouts ``layouts.choose`` evaluated."""
    out = {}
    for r in rows:
        key = (r["layout"], r["attention"])
        out.setdefault(key, {})[r["phase"]] = format_duration(r["time_s"]) + ("" if r["feasible"] else " (does not fit)")
    return [(lay, att, v.get("prefill", "-"), v.get("decode", "-")) for (lay, att), v in out.items()]


def plot_memory(plan, path=None) -> bytes:
    """Peak memory per tier of the plan and the other engines' plans against each tier's
    capacity. Returns the PNG (written to ``path`` atomically when given)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = []
    if plan.feasible:
        rows.append(("llmsim", plan.estimate))
    rows += [(k, v[1]) for k, v in plan.comparison().items() if v[1] is not None]
    tiers = ("gpu", "cpu", "disk")
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.6))
    for ax, tier in zip(axes, tiers):
        names = [r[0] for r in rows]
        vals = [r[1].peak_memory_bytes[tier] / 2**30 for r in rows]
        ax.bar(names, vals, color=["#1f77b4" if n == "llmsim" else "#999999" for n in names])
        if rows:
            cap = rows[0][1].capacity_bytes[tier] / 2**30
            ax.axhline(cap, color="#d62728", ls="--", lw=1.2, label=f"capacity {cap:,.0f} GiB")
            ax.legend(loc="upper right", fontsize=8)
        ax.set_title(f"{tier} peak memory (GiB)")
        ax.tick_params(axis="x", rotation=30, labelsize=8)
        ax.set_ylim(0, max([*vals, rows[0][1].capacity_bytes[tier] / 2**30 if rows else 1]) * 1.15 or 1)
    fig.suptitle(f"{plan.model} on {plan.hardware}: peak memory per tier", fontsize=11)
    fig.tight_layout()
    return figure_png(fig, path)


def plot_components(est, path=None, title: str = "") -> bytes:
    """Busy time per component per phase, coloured by resource, with each phase's latency.
    Returns the PNG (written to ``path`` atomically when given)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    phases = ("prefill", "decode")
    colors = {"h2d": "#1f77b4", "d2h": "#aec7e8", "disk_read": "#ff7f0e", "disk_write": "#ffbb78",
              "gpu": "#2ca02c", "cpu": "#d62728"}
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, ph in zip(axes, phases):
        rows = [r for r in est.breakdown if r["phase"] == ph]
        labels = [f"{r['component']} ({r['resource']})" for r in rows]
        vals = [r["time_s"] for r in rows]
        ax.barh(labels, vals, color=[colors.get(r["resource"], "#777") for r in rows])
        lat = est.prefill_latency_s if ph == "prefill" else est.decode_latency_s
        ax.axvline(lat, color="black", ls="--", lw=1.2, label=f"{ph} latency {format_duration(lat)}")
        ax.set_title(f"{ph}: busy time per component (s)")
        ax.tick_params(axis="y", labelsize=8)
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return figure_png(fig, path)


def plot_pareto(plan, path=None) -> bytes:
    """Throughput vs latency of every solved candidate, the frontier, the other engines' plans
    and the plan. Returns the PNG (written to ``path`` atomically when given)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = plan.candidates
    df = df[df["solved"] & df["feasible"]]
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    ax.scatter(df["total_latency_s"], df["throughput_tok_s"], s=10, color="#bbbbbb", label="candidates (LP optimum)")
    front = plan.pareto()
    ax.plot(front["total_latency_s"], front["throughput_tok_s"], "-o", color="#1f77b4", ms=4, label="Pareto frontier")
    markers = {"all_gpu": "s", "accelerate": "^", "zero_inference": "v"}
    for name, (pol, est, note) in plan.comparison().items():
        if est is not None:
            ax.scatter([est.total_latency_s], [est.throughput_tok_s], marker=markers.get(name, "D"), s=70,
                       color="#ff7f0e", edgecolor="black", label=f"engine: {name}", zorder=3)
    if plan.feasible:
        ax.scatter([plan.estimate.total_latency_s], [plan.estimate.throughput_tok_s], marker="*", s=220,
                   color="#d62728", edgecolor="black", label="llmsim plan (rounded)", zorder=4)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("latency for the workload (s)")
    ax.set_ylabel("throughput (tok/s)")
    ax.set_title(f"{plan.model} on {plan.hardware}: throughput vs latency")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return figure_png(fig, path)


def plan_markdown(plan, hw, images: dict) -> str:
    """The capacity-planning report as Markdown (images referenced by file name)."""
    wl = plan.workload
    lines = [f"# Capacity plan: {plan.model} on {plan.hardware}", ""]
    lines += [f"- Workload: prompt {wl['prompt_len']} tokens, {wl['gen_len']} generated tokens"
              + (f", {wl['num_sequences']} sequences" if wl.get("num_sequences") else ""),
              f"- Objective: {plan.objective}" + "".join(f"; {k} = {v:g}" for k, v in plan.constraints.items()
                                                         if v is not None),
              f"- Hardware profile: `{hw.name}` ({hw.source}; {hw.metadata.get('date', '')})", ""]
    if hw.source != "measured":
        lines += [f"> The `{hw.name}` profile holds {hw.source} figures, not measurements of your machine. "
                  "Run `llmsim profile` there and plan again for measured figures.", ""]
    if not plan.feasible:
        lines += ["## No feasible policy", "", plan.reason, ""]
    else:
        e, p = plan.estimate, plan.policy
        lines += ["## Recommendation", "", f"**{policy_text(p.to_dict())}**", "", dtype_text(plan) + ".", "",
                  "| | value |", "|---|---|",
                  f"| throughput | {e.throughput_tok_s:.3f} tok/s |",
                  f"| decode throughput | {(e.decode_throughput_tok_s or 0):.3f} tok/s |",
                  f"| latency (prefill + decode) | {format_duration(e.total_latency_s)} "
                  f"({format_duration(e.prefill_latency_s)} + {format_duration(e.decode_latency_s)}) |",
                  f"| sequences | {e.num_sequences} ({e.num_blocks} block(s) of {e.block_size}) |",
                  f"| bottleneck | {bound_text(hw, e.bottleneck, e.policy['dtype']).removeprefix('bottleneck ')} |"]
        for t in ("gpu", "cpu", "disk"):
            lines.append(f"| peak {t} memory | {format_bytes(e.peak_memory_bytes[t])} of "
                         f"{format_bytes(e.capacity_bytes[t])} |")
        if partition_text(plan):
            lines += ["", partition_text(plan).strip().capitalize() + "."]
            rows = plan.partition.get("evaluated") or []
            if rows:
                lines += ["", "| partition layout | attention | prefill | decode |", "|---|---|---|---|"]
                lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in _partition_rows(rows)]
        r = plan.relaxed_estimate
        if r is not None and not plan.partition.get("improved"):
            lines += ["", f"The LP's continuous optimum reaches {r.throughput_tok_s:.3f} tok/s "
                          f"({policy_text(plan.relaxed_policy.to_dict())}); rounded to what {plan.engine} can place "
                          f"(whole tensors and rows) it reaches {e.throughput_tok_s:.3f} tok/s.", ""]
        else:
            lines.append("")
    lines += ["## The best plan of each engine on this machine", "",
              "Each engine planned with its own schedule, placement rules and buffers on the same profile.", "",
              "| engine | throughput (tok/s) | latency | policy |", "|---|---|---|---|"]
    if plan.feasible:
        lines.append(f"| **{plan.engine}** | **{plan.estimate.throughput_tok_s:.3f}** | "
                     f"{format_duration(plan.estimate.total_latency_s)} | {policy_text(plan.policy.to_dict())} |")
    for name, (pol, est, note) in plan.comparison().items():
        if est is None:
            lines.append(f"| {name} | - | - | {note} |")
        else:
            lines.append(f"| {name} | {est.throughput_tok_s:.3f} | {format_duration(est.total_latency_s)} | "
                         f"{policy_text(pol.to_dict())}{' (' + note + ')' if note else ''} |")
    lines += ["", "## Plots", ""]
    for title, name in (("Peak memory per tier", "memory"), ("Time per component per phase", "components"),
                        ("Throughput vs latency", "pareto")):
        if name in images:
            lines += [f"### {title}", "", f"![{title}]({images[name]})", ""]
    front = plan.pareto()
    if len(front):
        lines += ["## Pareto frontier (LP optimum per candidate)", "",
                  "| batch x batches | 4-bit weights | 4-bit cache | CPU attention | throughput (tok/s) | latency |",
                  "|---|---|---|---|---|---|"]
        for _, r in front.iterrows():
            lines.append(f"| {r.gpu_batch_size} x {r.num_gpu_batches} | {bool(r.compress_weights)} | "
                         f"{bool(r.compress_cache)} | {bool(r.cpu_attention)} | {r.throughput_tok_s:.3f} | "
                         f"{format_duration(r.total_latency_s)} |")
        lines.append("")
    searched = plan.dtype_choice.get("searched") or []
    lines += ["## Search", "", f"{plan.candidates_total} candidates (batch size x GPU batches x compression x CPU "
              f"attention, for each of {', '.join(searched) or 'the dtypes'} and each parallel layout); "
              f"{plan.candidates_pruned} pruned by bounds; {plan.candidates_evaluated} LPs "
              f"solved in {plan.search_seconds:.3f} s."]
    if plan.solver_fallbacks:
        lines += ["", "Solver fallbacks: " + "; ".join(plan.solver_fallbacks[:5])]
    lines += ["", "Check it on the real machine: `llmsim validate --plan` runs the recommended policy on the "
              "torch executor and compares predicted with measured.", ""]
    return "\n".join(lines)


def write_plan_report(plan, hw, outdir, label: str = "--report") -> dict:
    """Write report.md, report.html (self-contained: images inlined) and the PNG plots into
    ``outdir``. Everything is rendered in memory first; then each file is written under a
    unique temporary name in ``outdir`` and, once all are written, renamed over its
    destination (``simulator.files.StagedFiles``). A failure leaves no file behind, and no
    folder when ``outdir`` did not exist; two reports written into one folder at once leave
    complete files. Raises ``OutputError`` naming ``label`` and the file. Returns the paths."""
    import base64
    import re
    from pathlib import Path

    from simulator.files import StagedFiles, check_interrupt, check_output_dir, make_dirs, remove_created

    out = Path(outdir)
    pngs = {"memory": plot_memory(plan)}
    if plan.feasible:
        pngs["components"] = plot_components(plan.estimate, None,
                                             f"{plan.model} on {plan.hardware}: where the time goes (recommended policy)")
    pngs["pareto"] = plot_pareto(plan)
    images = {k: f"{k}.png" for k in pngs}
    md = plan_markdown(plan, hw, images)
    body = _markdown_to_html(md)
    for key, name in images.items():
        data = base64.b64encode(pngs[key]).decode()
        body = body.replace(f'src="{name}"', f'src="data:image/png;base64,{data}"')
    html = ("<!doctype html><html><head><meta charset='utf-8'><title>llmsim plan</title><style>"
            "body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}"
            "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;font-size:14px}"
            "img{max-width:100%}blockquote{background:#fff6dd;border-left:4px solid #e0b000;margin:1em 0;"
            "padding:.5em 1em}code{background:#f3f3f3;padding:1px 4px}</style></head><body>"
            + body + "</body></html>")
    assert not re.search(r'src="(?!data:)', html), "every image must be inlined"

    check_interrupt()  # a Ctrl-C swallowed while plotting: create nothing
    created = check_output_dir(out, label)
    try:
        make_dirs(created, label)
        with StagedFiles(out, label) as staged:
            for key, name in images.items():
                staged.add(name, pngs[key])
            staged.add("report.md", md)
            staged.add("report.html", html)
    except BaseException:
        remove_created(created)
        raise
    return {"markdown": str(out / "report.md"), "html": str(out / "report.html"),
            "images": [str(out / v) for v in images.values()]}


def _markdown_to_html(md: str) -> str:
    """The small Markdown subset plan_markdown writes: headings, lists, tables, quotes,
    images, bold and code."""
    import html as h
    import re

    def inline(t: str) -> str:
        t = h.escape(t)
        t = re.sub(r"!\[([^\]]*)\]\(([^)]+)\)", r'<img alt="\1" src="\2">', t)
        t = re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", t)
        return re.sub(r"`([^`]+)`", r"<code>\1</code>", t)

    out, lines, i = [], md.splitlines(), 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{inline(line[level:].strip())}</h{level}>")
        elif line.startswith("|"):
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                if not re.match(r"^\|[-| ]+\|$", lines[i]):
                    rows.append([c.strip() for c in lines[i].strip("|").split("|")])
                i += 1
            out.append("<table>" + "".join(
                "<tr>" + "".join(f"<{'th' if k == 0 else 'td'}>{inline(c)}</{'th' if k == 0 else 'td'}>" for c in r)
                + "</tr>" for k, r in enumerate(rows)) + "</table>")
            continue
        elif line.startswith("- "):
            items = []
            while i < len(lines) and lines[i].startswith("- "):
                items.append(f"<li>{inline(lines[i][2:])}</li>")
                i += 1
            out.append("<ul>" + "".join(items) + "</ul>")
            continue
        elif line.startswith("> "):
            out.append(f"<blockquote>{inline(line[2:])}</blockquote>")
        elif line.strip():
            out.append(f"<p>{inline(line)}</p>")
        i += 1
    return "\n".join(out)
