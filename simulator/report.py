"""Human-facing output: terminal tables for estimates and plans, and the capacity-planning
report (Markdown + self-contained HTML with PNG plots, rendered from the Jinja2 templates in
``simulator/templates/``, and ``configs.csv``).

The report reads top to bottom as a capacity planner hands it on: the recommendation in one
sentence (engine, policy in words, throughput with its error band, time to first token, time
per output token, cost per million generated tokens), then the evidence (the figures, the
cautions, the engines compared, the layouts, the plots, the frontier, which figures of the
profile are measured and which are datasheet or paper values, the search).

Every percent printed goes through ``simulator.units.format_percent``; JSON keeps fractions.
"""

from __future__ import annotations

import functools
import math

from simulator.units import GiB, format_bytes, format_duration, format_percent

TIER_LABELS = {"gpu": "GPU", "cpu": "CPU RAM", "disk": "disk"}
TIER_PLACES = {"gpu": "in GPU memory", "cpu": "in CPU RAM", "disk": "on disk"}
BOUND_WORDS = {
    "h2d": "the host-to-GPU link", "d2h": "the GPU-to-host link", "link_duplex": "the host-GPU link (both directions)",
    "disk": "the disk", "gpu": "the GPU's compute and memory bandwidth", "cpu": "the CPU",
    "host": "the host thread issuing kernels", "collective": "GPU-to-GPU collectives",
    "p2p": "pipeline sends between GPUs",
}

# What 4-bit compression costs in quality: FlexGen (Sheng et al., arXiv 2303.06865, section 5
# "Approximate methods", Table 5): group-wise min/max quantization to 4 bits, group size 64, of
# the weights and the KV cache together, no retraining or calibration; Lambada accuracy
# (higher is better) and WikiText perplexity (lower is better) of OPT, fp16 vs 4-bit.
FLEXGEN_4BIT_QUALITY = (
    # model, lambada fp16, lambada 4-bit, wikitext ppl fp16, wikitext ppl 4-bit
    ("OPT-30B", 0.725, 0.724, 12.72, 12.90),
    ("OPT-175B", 0.758, 0.756, 10.82, 10.94),
)
COMPRESSION_SOURCE = "FlexGen, arXiv 2303.06865, section 5 (Approximate methods), Table 5"


# ------------------------------------------------------------------ words and numbers
def placement_text(p: dict) -> str:
    """{'gpu_frac': .2, 'cpu_frac': .8, 'disk_frac': 0} -> '20/80/0' (``format_percent``)."""
    return "/".join(format_percent(p[k]) for k in ("gpu_frac", "cpu_frac", "disk_frac"))


def cpu_attention_applies(pol: dict) -> bool:
    """CPU attention computes over the part of the KV cache that is off the GPU: with the
    whole cache on the GPU the flag changes nothing, and is not printed."""
    return bool(pol.get("cpu_attention")) and pol["cache"]["gpu_frac"] < 1.0


def policy_text(pol: dict) -> str:
    """The policy in one compact line: batch, placements (GPU/CPU/disk percents), flags."""
    flags = [pol["dtype"]] if pol.get("dtype") else []
    if cpu_attention_applies(pol):
        flags.append("cpu attention")
    if pol["compress_weights"]:
        flags.append("4-bit weights")
    if pol["compress_cache"]:
        flags.append("4-bit cache")
    flags.append("overlap" if pol["overlap"] else "no overlap")
    if pol.get("disk_io", "direct") != "direct":
        flags.append(f"disk {pol['disk_io']}")
    par = [f"{k}={pol[k]}" for k in ("tp", "pp", "dp") if pol.get(k, 1) != 1]
    if pol.get("expert_parallel") or pol.get("expert_offload"):  # mixture of experts (simulator.moe)
        from simulator.moe import variant_text
        par.append(variant_text(bool(pol.get("expert_parallel")), pol.get("expert_offload", "prefetch")))
    if "prefill_layout" in pol:  # partition layouts other than Megatron's (simulator.layouts)
        par.append(f"prefill {pol['prefill_layout']} · decode {pol['decode_layout']} · attention over "
                   f"{pol['attention_layout']}")
    return (f"batch {pol['gpu_batch_size']} x {pol['num_gpu_batches']} · weights {placement_text(pol['weights'])} · "
            f"cache {placement_text(pol['cache'])} · activations {placement_text(pol['activations'])} · "
            + " · ".join(flags + par))


def placement_words(name: str, p: dict, host_device: bool = False) -> str:
    """``"weights in CPU RAM"`` or ``"KV cache 93.2% CPU RAM / 5% disk / 1.8% GPU"`` (the
    largest share first)."""
    labels = dict(TIER_LABELS, gpu="device RAM" if host_device else "GPU")
    places = dict(TIER_PLACES, gpu="in device RAM" if host_device else "in GPU memory")
    on = sorted(((t, p[f"{t}_frac"]) for t in ("gpu", "cpu", "disk") if p[f"{t}_frac"] > 0), key=lambda x: -x[1])
    if len(on) == 1:
        return f"{name} {places[on[0][0]]}"
    return f"{name} " + " / ".join(f"{format_percent(f)}% {labels[t]}" for t, f in on)


def policy_words(pol: dict, host_device: bool = False) -> str:
    """The policy in words, for the recommendation sentence: batch, placements (tensors on
    one and the same tier named together), compression, where attention runs, parallelism
    and the dtype, comma-separated."""
    b, nb = pol["gpu_batch_size"], pol["num_gpu_batches"]
    parts = [f"blocks of {b * nb} sequences ({nb} GPU batches of {b})" if nb > 1 else
             f"batches of {plural(b, 'sequence')}"]
    items = []
    for key, name, compressed in (("weights", "weights", pol["compress_weights"]),
                                  ("cache", "KV cache", pol["compress_cache"]), ("activations", "activations", False)):
        text = placement_words(name, pol[key], host_device)
        extra = (" as 4-bit" if compressed else "") + (" with attention on the CPU" if key == "cache" and
                                                       cpu_attention_applies(pol) else "")
        items.append((name, text, extra))
    places = [t[len(n):] for n, t, _ in items]
    if len(set(places)) == 1 and "%" not in places[0]:  # all three wholly on one tier
        w4 = " (4-bit)" if pol["compress_weights"] else ""
        c4 = " (4-bit)" if pol["compress_cache"] else ""
        parts.append(f"weights{w4}, KV cache{c4} and activations{places[0]}")
        if cpu_attention_applies(pol):
            parts.append("attention on the CPU")
    else:
        parts += [t + x for _, t, x in items]
    tp, pp, dp = (pol.get(k, 1) for k in ("tp", "pp", "dp"))
    if tp * pp * dp > 1:
        par = [f"tensor parallel {tp}" if tp > 1 else "", f"{pp} pipeline stages" if pp > 1 else "",
               f"{dp} data-parallel replicas" if dp > 1 else ""]
        parts.append(f"{tp * pp * dp} GPUs (" + ", ".join(x for x in par if x) + ")")
        if "prefill_layout" in pol:
            pre, dec, att = pol["prefill_layout"], pol["decode_layout"], pol["attention_layout"]
            split = f"layers split {pre} in both phases" if pre == dec else \
                f"layers split {pre} in the prefill and {dec} in the decode"
            parts.append(split + (f", the KV cache sharded over the {att}" if att != "heads" else ""))
    if not pol.get("overlap", True):
        parts.append("no overlap")
    parts.append(pol["dtype"])
    return ", ".join(parts)


def plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def number_text(v: float | None) -> str:
    """Three significant digits without an exponent from 1e-4 to 1e6 (1320, 16.5, 0.0123)."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:.0f}" if abs(v) >= 1000 else f"{v:.3g}"


def usd_text(v: float | None) -> str:
    if v is None:
        return "-"
    return f"${v:,.2f}" if v >= 1 else f"${v:.3g}"


def band_phrase(band, short: bool = False) -> str:
    """``"p10-p90 6.59-9.57 tok/s from 4 records of flexgen on GDDR-class GPUs, bound gpu"``
    or ``"no error band: 0 record(s) of ..."``; ``short``: ``"p10-p90 6.59-9.57 tok/s, 4
    records"`` or ``"no error band"``."""
    if band.evidence:
        if short:
            return f"p10-p90 {number_text(band.low)}-{number_text(band.high)} tok/s, {plural(band.records, 'record')}"
        return band.text("tok/s")
    return "no error band" if short else "no error band: " + (band.note or "no matching records")


def bound_text(hw, bottleneck: str, dtype: str = "fp16") -> str:
    """``"bottleneck h2d (links.h2d_pinned_GBps: paper)"``: the bound and where the figures
    that set it come from (``HardwareProfile.bound_sources``)."""
    if hw is None:
        return f"bottleneck {bottleneck}"
    src = hw.bound_sources(bottleneck, dtype)
    return f"bottleneck {bottleneck}" + (" (" + ", ".join(f"{k}: {v}" for k, v in src.items()) + ")" if src else "")


def bound_words(hw, bottleneck: str, dtype: str = "fp16") -> str:
    """``"the host-to-GPU link (links.h2d_pinned_GBps, a paper figure)"``."""
    what = BOUND_WORDS.get(bottleneck, bottleneck)
    if hw is None:
        return what
    src = hw.bound_sources(bottleneck, dtype)
    return what + (" (" + ", ".join(f"{k}: {v}" for k, v in src.items()) + ")" if src else "")


# ------------------------------------------------------------------ figures of one estimate
def gpus_used(pol: dict) -> int:
    """GPUs (chips) one policy runs on: tp x pp x dp."""
    return int(pol.get("tp", 1) * pol.get("pp", 1) * pol.get("dp", 1))


def ttft_s(est) -> float:
    """Time to first token of the first block: the block's prefill, layer by layer over all
    its GPU batches (FlexGen's zig-zag schedule, arXiv 2303.06865 section 4.1), after which
    every sequence of the block has its first token. Later blocks (``num_blocks`` > 1) wait
    for the blocks before them. Unit: s."""
    return est.prefill_latency_s / max(est.num_blocks, 1)


def tpot_s(est) -> float | None:
    """Time per output token after the first, per sequence: one decode step of the block
    (all its sequences advance together), ``decode time of a block / (gen_len - 1)``; None
    when one token is generated. Unit: s."""
    n = est.workload.get("gen_len", 0)
    if n <= 1:
        return None
    return est.decode_latency_s / max(est.num_blocks, 1) / (n - 1)


def usd_per_million_tokens(gpus: int, gpu_hour_usd: float, throughput_tok_s: float) -> float:
    """Cost of a million generated tokens at ``gpu_hour_usd`` per GPU-hour: GPU-hours = GPUs
    used x time, time for 1e6 tokens = 1e6 / throughput, so
    ``gpus x gpu_hour_usd / 3600 x 1e6 / throughput_tok_s`` USD (the same formula as
    ``simulator.serving.capacity`` for serving)."""
    return gpus * gpu_hour_usd / 3600.0 * 1e6 / throughput_tok_s


def check_gpu_hour_price(value, flag: str = "--gpu-hour-price") -> float | None:
    """The price as a float > 0 (finite), or None; else PolicyError naming the flag."""
    if value is None:
        return None
    from simulator.errors import PolicyError
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise PolicyError(f"{flag} must be a number of USD > 0, got {value!r}")
    return float(value)


def plan_figures(plan, gpu_hour_usd: float | None = None) -> dict:
    """The plan's headline figures (JSON): ``ttft_s``, ``tpot_s``, ``gpus_used``,
    ``gpu_hours_per_million_tokens`` (GPUs x 1e6 / throughput / 3600), ``gpu_hour_usd``,
    ``usd_per_million_tokens`` (None without a price or a plan)."""
    est = plan.estimate if plan.feasible else None
    out = {"ttft_s": None, "tpot_s": None, "gpus_used": None, "gpu_hours_per_million_tokens": None,
           "gpu_hour_usd": gpu_hour_usd, "usd_per_million_tokens": None}
    if est is None:
        return out
    out.update(ttft_s=ttft_s(est), tpot_s=tpot_s(est), gpus_used=gpus_used(est.policy))
    if est.throughput_tok_s > 0:
        out["gpu_hours_per_million_tokens"] = usd_per_million_tokens(out["gpus_used"], 1.0, est.throughput_tok_s)
    if gpu_hour_usd is not None and est.throughput_tok_s > 0:
        out["usd_per_million_tokens"] = usd_per_million_tokens(out["gpus_used"], gpu_hour_usd, est.throughput_tok_s)
    return out


def compression_note(pol: dict | None, short: bool = False) -> str:
    """What the plan's 4-bit compression costs in quality, with the source; '' without.
    ``short``: one line for the terminal."""
    if not pol or not (pol.get("compress_weights") or pol.get("compress_cache")):
        return ""
    what = " and ".join(x for x, on in (("weights", pol["compress_weights"]), ("KV cache", pol["compress_cache"]))
                        if on)
    if short:
        m, a, b, p, q = FLEXGEN_4BIT_QUALITY[0]
        return (f"4-bit {what} cost accuracy ({m}: Lambada {a:.3f} -> {b:.3f}, WikiText perplexity {p:.2f} -> "
                f"{q:.2f}; {COMPRESSION_SOURCE}); --no-compression plans without")
    figs = "; ".join(f"{m}: Lambada accuracy {a:.3f} -> {b:.3f}, WikiText perplexity {p:.2f} -> {q:.2f}"
                     for m, a, b, p, q in FLEXGEN_4BIT_QUALITY)
    return (f"The plan compresses the {what} to 4 bits (group-wise min/max quantization, groups of 64 values, "
            f"no retraining). It costs some accuracy: with weights and KV cache at 4 bits FlexGen measured "
            f"{figs} (fp16 -> 4-bit; {COMPRESSION_SOURCE}). Other models and tasks may lose more; "
            "`llmsim plan --no-compression` plans without it.")


def recommendation_sentence(plan, hw=None, band=None, gpu_hour_usd: float | None = None) -> str:
    """The plan in one sentence: engine, policy in words, throughput (with its band), time to
    first token and per output token, cost per million tokens, the bound."""
    if not plan.feasible:
        return f"No policy of {plan.engine} runs {plan.model} on {plan.hardware} here: {plan.reason}."
    e = plan.estimate
    pol = plan.policy.to_dict()
    host = bool(hw is not None and hw.device_is_host)
    text = (f"Run {plan.model} on {plan.hardware} with {plan.engine} \u2014 {policy_words(pol, host)} \u2014 "
            f"for {number_text(e.throughput_tok_s)} tok/s")
    if band is not None:
        text += f" ({band_phrase(band, short=True)})"
    per = tpot_s(e)
    text += f", the first token after {format_duration(ttft_s(e))}"
    if per is not None:
        text += f" and then {format_duration(per)} per output token"
    text += (f" ({plural(e.num_sequences, 'sequence')} of {e.workload['gen_len']} tokens in "
             f"{format_duration(e.total_latency_s)})")
    fig = plan_figures(plan, gpu_hour_usd)
    if fig["usd_per_million_tokens"] is not None:
        text += (f", at {usd_text(fig['usd_per_million_tokens'])} per million generated tokens "
                 f"({usd_text(gpu_hour_usd)} per GPU-hour, {plural(fig['gpus_used'], 'GPU')})")
    return text + f"; the bound is {BOUND_WORDS.get(e.bottleneck, e.bottleneck)}."


# ------------------------------------------------------------------ terminal: one estimate
def print_estimate(console, est, hw=None, headroom=None) -> None:
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
    per = tpot_s(est)
    console.print(f"time to first token {format_duration(ttft_s(est))}"
                  + (f" · time per output token {format_duration(per)}" if per is not None else ""))
    m = Table(show_header=True, header_style="bold", title="peak memory")
    for col in ("tier", "prefill", "decode", "capacity"):
        m.add_column(col, justify="right" if col != "tier" else "left")
    for tier in ("gpu", "cpu", "disk"):
        m.add_row(tier, format_bytes(est.peak_memory_by_phase["prefill"][tier]),
                  format_bytes(est.peak_memory_by_phase["decode"][tier]), format_bytes(est.capacity_bytes[tier]))
    console.print(m)
    if headroom is not None:
        console.print(f"capacity: {headroom.text()}")
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


def layout_rows(plan) -> list[dict]:
    """The best of each (tp, pp, dp) layout on ``plan.gpus`` GPUs: the LP optimum of its best
    candidate (Megatron's 1D split, re-evaluated with ``estimate()``), except the layout of the
    recommendation, whose row is the recommended (rounded) policy itself with its partition
    layouts per phase. Rows {tp, pp, dp, batch, dtype, throughput_tok_s, total_latency_s,
    prefill_layout, decode_layout, attention_layout, recommended}."""
    rows = []
    df = plan.layouts() if plan.candidates is not None and len(plan.candidates) else None
    chosen = None
    if plan.feasible:
        p = plan.policy
        chosen = (p.tp, p.pp, p.dp)
    seen = False
    for _, r in (df.iterrows() if df is not None else []):
        key = (int(r.tp), int(r.pp), int(r.dp))
        row = {"tp": key[0], "pp": key[1], "dp": key[2], "batch": f"{int(r.gpu_batch_size)} x {int(r.num_gpu_batches)}",
               "dtype": r["dtype"], "throughput_tok_s": float(r.throughput_tok_s),
               "total_latency_s": float(r.total_latency_s), "prefill_layout": "1d-ws", "decode_layout": "1d-ws",
               "attention_layout": "heads", "recommended": False}
        if key == chosen:
            row.update(_recommended_layout_row(plan))
            seen = True
        rows.append(row)
    if chosen is not None and not seen:
        rows.append({"tp": chosen[0], "pp": chosen[1], "dp": chosen[2], **_recommended_layout_row(plan)})
        rows.sort(key=lambda r: (r["tp"], r["pp"], r["dp"]))
    return rows


def _recommended_layout_row(plan) -> dict:
    p, e = plan.policy, plan.estimate
    pre, dec, att = p.partition_names
    return {"batch": f"{p.gpu_batch_size} x {p.num_gpu_batches}", "dtype": p.dtype,
            "throughput_tok_s": e.throughput_tok_s, "total_latency_s": e.total_latency_s,
            "prefill_layout": pre, "decode_layout": dec, "attention_layout": att, "recommended": True}


def print_plan(console, plan, hw=None, band=None, headroom=None, gpu_hour_usd: float | None = None,
               compression: bool = True) -> None:
    """The plan in the terminal: the recommendation, its estimate, the engines compared, the
    layouts, search figures."""
    from rich.table import Table

    wl = plan.workload
    cons = ", ".join(f"{k} {v:g}" for k, v in plan.constraints.items() if v is not None)
    console.print(f"[bold]llmsim plan[/]: {plan.model} on {plan.hardware} · prompt {wl['prompt_len']}, "
                  f"gen {wl['gen_len']} · objective {plan.objective}" + (f" · {cons}" if cons else ""))
    if not plan.feasible:
        console.print(f"[red]no feasible policy[/]: {plan.reason}")
    else:
        e = plan.estimate
        console.print(recommendation_sentence(plan, hw, band, gpu_hour_usd))
        console.print(f"recommended: {policy_text(plan.policy.to_dict())}")
        console.print(f"  {dtype_text(plan)}")
        per = tpot_s(e)
        console.print(f"  throughput {e.throughput_tok_s:.3f} tok/s (decode {(e.decode_throughput_tok_s or 0):.3f}) · "
                      f"time to first token {format_duration(ttft_s(e))}"
                      + (f" · time per output token {format_duration(per)}" if per is not None else "")
                      + f" · {e.num_sequences} sequences in {format_duration(e.total_latency_s)} · "
                      f"{bound_text(hw, e.bottleneck, e.policy['dtype'])}")
        fig = plan_figures(plan, gpu_hour_usd)
        if fig["usd_per_million_tokens"] is not None:
            console.print(f"  cost {usd_text(fig['usd_per_million_tokens'])} per million generated tokens "
                          f"({plural(fig['gpus_used'], 'GPU')} at {usd_text(gpu_hour_usd)} per GPU-hour)")
        console.print("  peak memory " + ", ".join(
            f"{t} {format_bytes(e.peak_memory_bytes[t])} / {format_bytes(e.capacity_bytes[t])}"
            for t in ("gpu", "cpu", "disk")))
        note = compression_note(plan.policy.to_dict(), short=True)
        if note:
            console.print(f"  [yellow]quality[/]: {note}")
        r = plan.relaxed_estimate
        if r is not None and not plan.partition.get("improved"):
            console.print(f"  LP optimum before rounding to whole tensors/rows: {r.throughput_tok_s:.3f} tok/s "
                          f"({policy_text(plan.relaxed_policy.to_dict())})")
    if headroom is not None:
        console.print(f"capacity: {headroom.text()}")
    if not compression:
        console.print("4-bit compression: not searched (--no-compression)")
    t = Table(title="the best plan of each engine on this machine (same profile, each engine's schedule)",
              header_style="bold")
    for col in ("engine", "throughput", "first token", "per token", "latency", "policy"):
        t.add_column(col)
    if plan.feasible:
        t.add_row(f"{plan.engine} (plan)", f"{plan.estimate.throughput_tok_s:.3f} tok/s",
                  format_duration(ttft_s(plan.estimate)), format_duration(tpot_s(plan.estimate)),
                  format_duration(plan.estimate.total_latency_s), policy_text(plan.policy.to_dict()))
    for name, (pol, est, note) in plan.comparison().items():
        if est is None:
            t.add_row(name, "-", "-", "-", "-", note)
        else:
            t.add_row(name, f"{est.throughput_tok_s:.3f} tok/s", format_duration(ttft_s(est)),
                      format_duration(tpot_s(est)), format_duration(est.total_latency_s),
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
        for col in ("tp", "pp", "dp", "batch", "throughput", "latency", "prefill", "decode"):
            lt.add_column(col)
        for r in layout_rows(plan):
            lt.add_row(str(r["tp"]), str(r["pp"]), str(r["dp"]), r["batch"], f"{r['throughput_tok_s']:.3f} tok/s",
                       format_duration(r["total_latency_s"]), r["prefill_layout"],
                       r["decode_layout"] + (" (recommended)" if r["recommended"] else ""))
        console.print(lt)
    console.print(f"search: {plan.search_seconds:.3f} s, {plan.candidates_evaluated} LPs solved, "
                  f"{plan.candidates_pruned} candidates pruned by bounds, {plan.candidates_total} candidates"
                  + (f"; solver fallbacks: {len(plan.solver_fallbacks)}" if plan.solver_fallbacks else ""))
    if hw is not None and hw.source != "measured":
        console.print(f"[yellow]note[/]: {hw.name} is a {hw.source} profile ({hw.source_text()}), not measurements "
                      "of this machine; run `llmsim profile` on the machine for measured figures")


# ------------------------------------------------------------------ plots
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


def _engine_estimates(plan) -> list[tuple[str, object]]:
    """(engine, estimate) of the plan and of every other engine with a plan."""
    return [(name, est) for name, _, est in _engine_plans(plan)]


def _engine_plans(plan) -> list[tuple[str, dict, object]]:
    """(engine, policy as asked, estimate) of the plan and of every other engine with a plan."""
    rows = [(plan.engine, plan.policy.to_dict(), plan.estimate)] if plan.feasible else []
    return rows + [(k, v[0].to_dict(), v[1]) for k, v in plan.comparison().items() if v[1] is not None]


def plot_memory(plan, path=None, headroom_bytes: dict | None = None) -> bytes:
    """Peak memory per tier of the plan and the other engines' plans against each tier's
    capacity (after the headroom, and the memory before it when ``headroom_bytes`` says how
    much is kept free). Returns the PNG (written to ``path`` atomically when given)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _engine_estimates(plan)
    tiers = ("gpu", "cpu", "disk")
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.6))
    for ax, tier in zip(axes, tiers):
        names = [r[0] for r in rows]
        vals = [r[1].peak_memory_bytes[tier] / GiB for r in rows]
        ax.bar(names, vals, color=["#1f77b4" if n == plan.engine else "#999999" for n in names])
        top = max(vals, default=1.0)
        if rows:
            cap = rows[0][1].capacity_bytes[tier] / GiB
            margin = (headroom_bytes or {}).get(tier, 0.0) / GiB
            label = f"plan capacity {cap:,.1f} GiB" + (f" ({margin:,.1f} GiB kept free)" if margin > 0 else "")
            ax.axhline(cap, color="#d62728", ls="--", lw=1.2, label=label)
            if margin > 0:
                ax.axhline(cap + margin, color="#555555", ls=":", lw=1.0, label=f"memory {cap + margin:,.1f} GiB")
            top = max(top, cap + margin)
            ax.legend(loc="upper right", fontsize=7)
        ax.set_title(f"{tier} peak memory (GiB)")
        ax.tick_params(axis="x", rotation=30, labelsize=8)
        ax.set_ylim(0, top * 1.25 or 1)
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


def pareto_points(plan):
    """What the throughput-vs-latency plot draws, as a DataFrame (kind, label,
    total_latency_s, throughput_tok_s): the plan engine's solved feasible candidates (LP
    optimum, re-evaluated), every engine's recommended plan, and the frontier of all of them
    (``on_frontier``: not dominated by any point drawn - lower or equal latency and higher
    throughput)."""
    import pandas as pd

    rows = []
    df = plan.candidates
    if df is not None and len(df):
        df = df[df["solved"] & df["feasible"]]
        rows += [{"kind": "candidate", "label": f"{plan.engine} candidates (LP optimum)", "total_latency_s": lat,
                  "throughput_tok_s": thr} for lat, thr in zip(df["total_latency_s"], df["throughput_tok_s"])]
    for name, est in _engine_estimates(plan):
        rows.append({"kind": "plan" if name == plan.engine else "engine",
                     "label": f"{name} plan (rounded)" if name == plan.engine else f"engine: {name}",
                     "total_latency_s": est.total_latency_s, "throughput_tok_s": est.throughput_tok_s})
    pts = pd.DataFrame(rows, columns=["kind", "label", "total_latency_s", "throughput_tok_s"])
    pts = pts[pts["total_latency_s"].notna() & pts["throughput_tok_s"].notna()].reset_index(drop=True)
    order = pts.sort_values(["total_latency_s", "throughput_tok_s"], ascending=[True, False]).index
    best, front = -math.inf, set()
    for i in order:
        if pts.at[i, "throughput_tok_s"] > best * (1 + 1e-12):
            front.add(i)
            best = pts.at[i, "throughput_tok_s"]
    pts["on_frontier"] = pd.Series([i in front for i in pts.index], index=pts.index, dtype=bool)
    return pts


def plot_pareto(plan, path=None) -> bytes:
    """Throughput vs latency of every point ``pareto_points`` draws, and the frontier of
    those points. Returns the PNG (written to ``path`` atomically when given)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = pareto_points(plan)
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    cand = pts[pts["kind"] == "candidate"]
    if len(cand):
        ax.scatter(cand["total_latency_s"], cand["throughput_tok_s"], s=10, color="#bbbbbb",
                   label=cand["label"].iloc[0])
    front = pts[pts["on_frontier"]].sort_values("total_latency_s")
    if len(front):
        ax.plot(front["total_latency_s"], front["throughput_tok_s"], "-", color="#1f77b4", lw=1.5, zorder=2,
                label="Pareto frontier of every point drawn")
    markers = ("^", "v", "s", "D", "P", "X")
    for k, (_, r) in enumerate(pts[pts["kind"] == "engine"].iterrows()):
        ax.scatter([r.total_latency_s], [r.throughput_tok_s], marker=markers[k % len(markers)], s=70,
                   color="#ff7f0e", edgecolor="black", label=r.label, zorder=3)
    for _, r in pts[pts["kind"] == "plan"].iterrows():
        ax.scatter([r.total_latency_s], [r.throughput_tok_s], marker="*", s=220, color="#d62728",
                   edgecolor="black", label=r.label, zorder=4)
    if len(pts):
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set_xlabel("latency for the workload (s)")
    ax.set_ylabel("throughput (tok/s)")
    ax.set_title(f"{plan.model} on {plan.hardware}: throughput vs latency")
    ax.grid(True, which="both", alpha=0.3)
    if len(pts):
        ax.legend(fontsize=8, loc="best")
    else:
        ax.text(0.5, 0.5, "no feasible configuration", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    return figure_png(fig, path)


# ------------------------------------------------------------------ the report's tables
CONFIG_COLUMNS = ("engine", "dtype", "tp", "pp", "dp", "gpu_batch_size", "num_gpu_batches", "compress_weights",
                  "compress_cache", "cpu_attention", *(f"{k}_{t}_frac" for k in ("weights", "cache", "activations")
                                                       for t in ("gpu", "cpu", "disk")),
                  "throughput_tok_s", "total_latency_s", "lp_block_time_s")


def configs_frame(plan):
    """Every feasible configuration the search evaluated, of the plan's engine and of each
    other engine (``Plan.candidates`` rows that were solved and fit within the bounds; an LP
    engine's rows are LP optima re-evaluated with ``estimate()``), one row each, columns
    ``CONFIG_COLUMNS`` (fractions 0..1, SI units)."""
    import pandas as pd

    frames = []
    for name, p in [(plan.engine, plan), *plan.engines.items()]:
        df = p.candidates
        if df is None or not len(df):
            continue
        df = df[df["solved"] & df["feasible"]].copy()
        df.insert(0, "engine", name)
        frames.append(df)
    if not frames:
        return pd.DataFrame(columns=list(CONFIG_COLUMNS))
    out = pd.concat(frames, ignore_index=True)
    for col in CONFIG_COLUMNS:
        if col not in out:
            out[col] = float("nan")
    return out[list(CONFIG_COLUMNS)].sort_values(["engine", "throughput_tok_s"], ascending=[True, False],
                                                 kind="stable").reset_index(drop=True)


def pareto_rows(plan) -> list[dict]:
    """The plan engine's candidates on its throughput-vs-latency frontier (``Plan.pareto``),
    with their parallel layout, placements and flags (CPU attention only where it applies)."""
    if plan.candidates is None or not len(plan.candidates):
        return []
    rows = []
    for _, r in plan.pareto().iterrows():
        pl = {k: {f"{t}_frac": float(r[f"{k}_{t}_frac"]) for t in ("gpu", "cpu", "disk")}
              for k in ("weights", "cache", "activations")}
        pol = {**pl, "cpu_attention": bool(r.cpu_attention)}
        rows.append({"tp": int(r.tp), "pp": int(r.pp), "dp": int(r.dp),
                     "batch": f"{int(r.gpu_batch_size)} x {int(r.num_gpu_batches)}", "dtype": r["dtype"],
                     "weights": placement_text(pl["weights"]), "cache": placement_text(pl["cache"]),
                     "activations": placement_text(pl["activations"]),
                     "compress_weights": "yes" if r.compress_weights else "no",
                     "compress_cache": "yes" if r.compress_cache else "no",
                     "cpu_attention": "yes" if cpu_attention_applies(pol) else "no",
                     "throughput": f"{r.throughput_tok_s:.3f}", "latency": format_duration(r.total_latency_s)})
    return rows


def profile_rows(hw, bottleneck: str | None = None, dtype: str = "fp16") -> list[dict]:
    """The profile's figures the cost model reads, each with its value and its source
    (``HardwareProfile.key_source``: measured, datasheet, paper, estimate) and whether it
    sets the plan's bound (``bound_sources``). Rows {key, value, source, bound}."""
    dev = "cpu" if hw.device_is_host else "gpu"
    d, c, links, disk, ic = hw.device, hw.cpu, hw.links, hw.disk, hw.interconnect
    flops = "GFLOPs" if d.is_host else "TFLOPs"
    scale = 1e9 if d.is_host else 1e12
    items = []
    if not d.is_host:
        items += [("gpu.memory_GiB", f"{d.memory_bytes / GiB:,.2f} GiB"),
                  ("gpu.hbm_GBps", f"{d.mem_bytes_per_s / 1e9:,.0f} GB/s")]
    items += [(f"{dev}.{dt}_{flops}", f"{v / scale:,.4g} {flops[0]}FLOP/s") for dt, v in d.matmul_flop_per_s]
    if d.matmul_curves:
        items.append((f"{dev}.matmul_table", f"{len(d.matmul_curves)} measured GEMM shapes"))
    if not d.is_host:
        items.append(("gpu.kernel_launch_us", f"{d.launch_s * 1e6:.3g} us"))
        items += [("links.h2d_pinned_GBps", f"{links.h2d_bytes_per_s / 1e9:.3g} GB/s"),
                  ("links.d2h_pinned_GBps", f"{links.d2h_bytes_per_s / 1e9:.3g} GB/s"),
                  ("links.duplex_pinned_GBps", f"{links.duplex_bytes_per_s / 1e9:.3g} GB/s")]
    items += [("cpu.memory_GiB", f"{c.memory_bytes / GiB:,.1f} GiB"),
              ("cpu.memory_GBps", f"{c.mem_bytes_per_s / 1e9:.3g} GB/s")]
    if c.reserved_bytes and not d.is_host:
        items.append(("cpu.reserved_GiB", f"{c.reserved_bytes / GiB:,.1f} GiB"))
    if not d.is_host:
        items += [(f"cpu.{dt}_GFLOPs", f"{v / 1e9:,.4g} GFLOP/s") for dt, v in c.matmul_flop_per_s]
    items += [("disk.capacity_GiB", f"{disk.capacity_bytes / GiB:,.0f} GiB"),
              ("disk.read_direct_GBps", f"{disk.read_direct_bytes_per_s / 1e9:.3g} GB/s"),
              ("disk.write_direct_GBps", f"{disk.write_direct_bytes_per_s / 1e9:.3g} GB/s")]
    if hw.total_gpus > 1:
        if getattr(ic, "topology", "switch") == "torus":
            if getattr(ic, "ici_link_bytes_per_s", None):
                items.append(("interconnect.ici_link_GBps", f"{ic.ici_link_bytes_per_s / 1e9:.3g} GB/s"))
        else:
            if ic.intra_node_bytes_per_s:
                items.append(("interconnect.intra_node_GBps", f"{ic.intra_node_bytes_per_s / 1e9:.3g} GB/s"))
            if ic.inter_node_bytes_per_s:
                items.append(("interconnect.inter_node_GBps", f"{ic.inter_node_bytes_per_s / 1e9:.3g} GB/s"))
    bound = set(hw.bound_sources(bottleneck, dtype)) if bottleneck else set()
    return [{"key": k, "value": v, "source": hw.key_source(k), "bound": k in bound} for k, v in items]


# ------------------------------------------------------------------ the report
@functools.lru_cache(maxsize=1)
def _environment():
    """The Jinja2 environment of ``simulator/templates`` (shipped as package data): HTML
    templates autoescaped, undefined names an error."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("simulator", "templates"),
                             autoescape=jinja2.select_autoescape(enabled_extensions=("html",),
                                                                 default_for_string=False),
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["cell"] = lambda v: str(v).replace("|", "\\|").replace("\n", " ")
    env.filters["code"] = _backticks_to_code
    return env


def _backticks_to_code(text) -> str:
    """HTML of a sentence whose `backticked` parts are code: escaped, then <code> (the
    template marks the result ``safe``)."""
    import html
    import re
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(str(text)))


def report_context(plan, hw, images: dict, band=None, headroom=None, gpu_hour_usd: float | None = None,
                   compression: bool = True, image_data: dict | None = None) -> dict:
    """Everything the report templates show, as plain strings, numbers and rows: both the
    Markdown and the HTML report render this one context. ``hw``: the profile as given (its
    figures, sources and class; the capacities the plan saw, after ``headroom``, are in its
    estimates); ``band``: the plan's (default ``estimate_band``); ``gpu_hour_usd``: for the
    cost per million tokens; ``compression``: whether 4-bit compression was searched."""
    from simulator.bands import estimate_band

    wl = plan.workload
    if band is None and plan.feasible:
        band = estimate_band(plan.estimate, hw)
    fig = plan_figures(plan, gpu_hour_usd)
    ctx = {
        "title": f"Capacity plan: {plan.model} on {plan.hardware}",
        "model": plan.model, "hardware": plan.hardware, "engine": plan.engine, "objective": plan.objective,
        "workload": f"prompt {wl['prompt_len']} tokens, {wl['gen_len']} generated tokens"
                    + (f", {wl['num_sequences']} sequences" if wl.get("num_sequences") else ""),
        "constraints": "".join(f"; {k} = {v:g}" for k, v in plan.constraints.items() if v is not None),
        "profile": {"name": hw.name, "source": hw.source, "sources": hw.source_text(),
                    "date": hw.metadata.get("date", ""), "measured": hw.source == "measured"},
        "feasible": plan.feasible, "reason": plan.reason,
        "sentence": recommendation_sentence(plan, hw, band, gpu_hour_usd),
        "headroom": headroom.text() if headroom is not None else "",
        "compression_searched": compression,
        "figures": [], "cards": [], "cautions": [], "engines": [], "layouts": [], "partition": "",
        "partition_rows": [], "relaxed": "", "dtype": dtype_text(plan), "images": [], "pareto": pareto_rows(plan),
        "profile_rows": [], "gpus": plan.gpus,
        "search": (f"{plan.candidates_total} candidates (batch size x GPU batches x compression x CPU attention, for "
                   f"each of {', '.join(plan.dtype_choice.get('searched') or []) or 'the dtypes'} and each parallel "
                   f"layout); {plan.candidates_pruned} pruned by bounds; {plan.candidates_evaluated} LPs solved in "
                   f"{plan.search_seconds:.3f} s."),
        "fallbacks": "; ".join(plan.solver_fallbacks[:5]),
        "configs_file": "configs.csv", "configs_rows": int(len(configs_frame(plan))),
    }
    rows = profile_rows(hw)
    unmeasured = [r for r in rows if r["source"] != "measured"]
    if unmeasured:
        kinds = sorted({r["source"] for r in unmeasured})
        kinds = ", ".join(kinds[:-1]) + " or " + kinds[-1] if len(kinds) > 1 else kinds[0]
        share = f"All {len(rows)}" if len(unmeasured) == len(rows) else f"{len(unmeasured)} of the {len(rows)}"
        ctx["cautions"].append(
            f"{share} figures of the {hw.name} profile are {kinds} values, "
            "not measurements of your machine; datasheet peaks overstate what kernels reach. Run `llmsim profile` "
            "there and plan again for measured figures (\"Where the figures come from\" below lists them).")
    if plan.feasible:
        e = plan.estimate
        pol = plan.policy.to_dict()
        per = tpot_s(e)
        ctx["figures"] = [
            ("throughput", f"{e.throughput_tok_s:.3f} tok/s (decode {(e.decode_throughput_tok_s or 0):.3f} tok/s)"),
            ("error band", band_phrase(band) if band is not None else "-"),
            ("time to first token", format_duration(ttft_s(e)) + (f" (first block; {e.num_blocks} blocks one after "
                                                                    "another)" if e.num_blocks > 1 else "")),
            ("time per output token", format_duration(per) if per is not None else "- (one token generated)"),
            ("latency for the workload", f"{format_duration(e.total_latency_s)} (prefill "
                                         f"{format_duration(e.prefill_latency_s)} + decode "
                                         f"{format_duration(e.decode_latency_s)})"),
            ("sequences", f"{e.num_sequences} ({e.num_blocks} block(s) of {e.block_size}"
                          + (f" on each of {pol['dp']} replicas" if pol.get("dp", 1) > 1 else "") + ")"),
            ("GPUs used", str(fig["gpus_used"])),
            ("GPU-hours per million generated tokens", number_text(fig["gpu_hours_per_million_tokens"])),
            ("cost per million generated tokens",
             f"{usd_text(fig['usd_per_million_tokens'])} at {usd_text(gpu_hour_usd)} per GPU-hour"
             if fig["usd_per_million_tokens"] is not None else "- (give --gpu-hour-price USD)"),
            ("bottleneck", bound_words(hw, e.bottleneck, pol["dtype"])),
            ("policy", policy_text(pol)),
        ]
        for t in ("gpu", "cpu", "disk"):
            ctx["figures"].append((f"peak {TIER_LABELS[t]}" + (" memory" if t == "gpu" else ""),
                                   f"{format_bytes(e.peak_memory_bytes[t])} of {format_bytes(e.capacity_bytes[t])}"))
        if headroom is not None:
            kept = headroom.margin_bytes(hw)
            ctx["figures"].append(("memory kept free", f"{format_bytes(kept['gpu'])} GPU, {format_bytes(kept['cpu'])} "
                                                       f"CPU RAM: {headroom.text()}"))
        ctx["cards"] = [("throughput", f"{number_text(e.throughput_tok_s)} tok/s",
                         band_phrase(band, short=True) if band is not None else ""),
                        ("time to first token", format_duration(ttft_s(e)), "prefill of a block"),
                        ("time per output token", format_duration(per) if per is not None else "-", "per sequence"),
                        ("cost per million tokens", usd_text(fig["usd_per_million_tokens"]),
                         f"{plural(fig['gpus_used'], 'GPU')} at {usd_text(gpu_hour_usd)}/GPU-hour"
                         if fig["usd_per_million_tokens"] is not None else "give --gpu-hour-price")]
        if fig["usd_per_million_tokens"] is None:
            ctx["cards"][-1] = ("GPU-hours per million tokens", number_text(fig["gpu_hours_per_million_tokens"]),
                                f"{plural(fig['gpus_used'], 'GPU')}; --gpu-hour-price USD for the cost")
        note = compression_note(pol)
        if note:
            ctx["cautions"].append(note)
        if band is not None and not band.evidence:
            ctx["cautions"].append(f"No error band ({band.note or 'no matching records'}): no recorded runs of "
                                   f"{plan.engine} on this class of machine back the throughput; it is the model's "
                                   "estimate only.")
        ctx["partition"] = partition_text(plan).strip()
        ctx["partition_rows"] = _partition_rows(plan.partition.get("evaluated") or []) if ctx["partition"] else []
        r = plan.relaxed_estimate
        if r is not None and not plan.partition.get("improved"):
            ctx["relaxed"] = (f"The LP's continuous optimum reaches {r.throughput_tok_s:.3f} tok/s "
                              f"({policy_text(plan.relaxed_policy.to_dict())}); rounded to what {plan.engine} can "
                              "place (whole tensors "
                              f"and rows) it reaches {e.throughput_tok_s:.3f} tok/s.")
        ctx["profile_rows"] = profile_rows(hw, e.bottleneck, pol["dtype"])
    else:
        ctx["profile_rows"] = profile_rows(hw)
    ctx["cost_label"] = "cost per M tokens" if gpu_hour_usd is not None else "GPU-hours per M tokens"
    for name, pol_asked, est in _engine_plans(plan):
        b = estimate_band(est, hw)
        per_m = usd_per_million_tokens(gpus_used(pol_asked), gpu_hour_usd or 1.0, est.throughput_tok_s) \
            if est.throughput_tok_s > 0 else None
        ctx["engines"].append({"engine": name, "plan": name == plan.engine,
                               "throughput": f"{est.throughput_tok_s:.3f}", "ttft": format_duration(ttft_s(est)),
                               "tpot": format_duration(tpot_s(est)), "latency": format_duration(est.total_latency_s),
                               "band": f"{number_text(b.low)}-{number_text(b.high)} ({plural(b.records, 'record')})"
                                       if b.evidence else "none",
                               "cost": usd_text(per_m) if gpu_hour_usd is not None else number_text(per_m),
                               "policy": policy_text(pol_asked)})
    for name, (pol, est, note) in plan.comparison().items():
        if est is None:
            ctx["engines"].append({"engine": name, "plan": False, "throughput": "-", "ttft": "-", "tpot": "-",
                                   "latency": "-", "band": "-", "cost": "-", "policy": note or "no plan"})
    if plan.gpus > 1:
        ctx["layouts"] = [{**r, "throughput": f"{r['throughput_tok_s']:.3f}",
                           "latency": format_duration(r["total_latency_s"])} for r in layout_rows(plan)]
    for title, name in (("Peak memory per tier", "memory"), ("Time per component per phase", "components"),
                        ("Throughput vs latency", "pareto")):
        if name in images:
            ctx["images"].append({"title": title, "file": images[name],
                                  "src": (image_data or {}).get(name, images[name])})
    return ctx


def plan_markdown(plan, hw, images: dict, **options) -> str:
    """The capacity-planning report as Markdown (images referenced by file name);
    ``options``: those of ``report_context`` (band, headroom, gpu_hour_usd, compression)."""
    return _environment().get_template("report.md").render(**report_context(plan, hw, images, **options)) + "\n"


def plan_html(plan, hw, images: dict, image_data: dict, **options) -> str:
    """The report as one self-contained HTML page: images inlined as data URIs."""
    html = _environment().get_template("report.html").render(
        **report_context(plan, hw, images, image_data=image_data, **options))
    return html.strip()


def write_plan_report(plan, hw, outdir, label: str = "--report", band=None, headroom=None,
                      gpu_hour_usd: float | None = None, compression: bool = True) -> dict:
    """Write report.md, report.html (self-contained: images inlined), the PNG plots and
    configs.csv (every feasible configuration evaluated) into ``outdir``. Everything is
    rendered in memory first; then each file is written under a unique temporary name in
    ``outdir`` and, once all are written, renamed over its destination
    (``simulator.files.StagedFiles``). A failure leaves no file behind, and no folder when
    ``outdir`` did not exist; two reports written into one folder at once leave complete
    files. Raises ``OutputError`` naming ``label`` and the file. Returns the paths."""
    import base64
    import re
    from pathlib import Path

    from simulator.files import StagedFiles, check_interrupt, check_output_dir, make_dirs, remove_created

    out = Path(outdir)
    margin = headroom.margin_bytes(hw) if headroom is not None else None
    pngs = {"memory": plot_memory(plan, headroom_bytes=margin)}
    if plan.feasible:
        pngs["components"] = plot_components(plan.estimate, None,
                                             f"{plan.model} on {plan.hardware}: where the time goes (recommended policy)")
    pngs["pareto"] = plot_pareto(plan)
    images = {k: f"{k}.png" for k in pngs}
    data = {k: "data:image/png;base64," + base64.b64encode(v).decode() for k, v in pngs.items()}
    options = dict(band=band, headroom=headroom, gpu_hour_usd=gpu_hour_usd, compression=compression)
    md = plan_markdown(plan, hw, images, **options)
    html = plan_html(plan, hw, images, data, **options)
    assert not re.search(r'src="(?!data:)', html), "every image must be inlined"
    csv = configs_frame(plan).to_csv(index=False)

    check_interrupt()  # a Ctrl-C swallowed while plotting: create nothing
    created = check_output_dir(out, label)
    try:
        make_dirs(created, label)
        with StagedFiles(out, label) as staged:
            for key, name in images.items():
                staged.add(name, pngs[key])
            staged.add("configs.csv", csv)
            staged.add("report.md", md)
            staged.add("report.html", html)
    except BaseException:
        remove_created(created)
        raise
    return {"markdown": str(out / "report.md"), "html": str(out / "report.html"), "csv": str(out / "configs.csv"),
            "images": [str(out / v) for v in images.values()]}
