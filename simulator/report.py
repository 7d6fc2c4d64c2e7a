"""Human-facing output: terminal tables for estimates and plans, and the capacity-planning
report (Markdown + self-contained HTML with PNG plots)."""

from __future__ import annotations

from simulator.units import format_bytes, format_duration


def placement_text(p: dict) -> str:
    """{'gpu_frac': .2, 'cpu_frac': .8, 'disk_frac': 0} -> '20/80/0'."""
    return "/".join(f"{100 * p[k]:.4g}" for k in ("gpu_frac", "cpu_frac", "disk_frac"))


def policy_text(pol: dict) -> str:
    flags = []
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
    return (f"batch {pol['gpu_batch_size']} x {pol['num_gpu_batches']} · weights {placement_text(pol['weights'])} · "
            f"cache {placement_text(pol['cache'])} · activations {placement_text(pol['activations'])} · "
            + " · ".join(flags + par))


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
              title=f"busy time per component (bottleneck: {est.bottleneck})")
    for col in ("phase", "component", "resource", "time"):
        b.add_column(col, justify="right" if col == "time" else "left")
    for r in est.breakdown:
        b.add_row(r["phase"], r["component"], r["resource"], format_duration(r["time_s"]))
    console.print(b)
