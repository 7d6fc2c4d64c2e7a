"""``llmsim simulate`` and ``llmsim capacity``: serving a request stream (simulator.serving).

``register(app)`` adds both commands to the typer app of ``llmsim.cli``. Everything heavy
is imported inside the commands, so ``llmsim --help`` stays fast.
"""

from __future__ import annotations

import math
from typing import Optional

import typer

from llmsim.common import check_output_dir, console, print_json


# ------------------------------------------------------------------ shared flag handling
def _stream_spec(num_requests, prompt_len, output_len, length_dist, burstiness, seed, trace):
    from simulator.serving.requests import LengthDist, StreamSpec, load_trace
    if trace is not None:
        for flag, v in (("--prompt-len", prompt_len), ("--output-len", output_len)):
            if v is not None:
                from simulator.errors import WorkloadError
                raise WorkloadError(f"{flag} cannot be combined with --trace (the trace gives the lengths)")
        return StreamSpec(num_requests=num_requests, burstiness=burstiness, seed=seed, trace=load_trace(trace))
    return StreamSpec(num_requests=num_requests, prompt_len=prompt_len, output_len=output_len,
                      length_dist=LengthDist.parse(length_dist), burstiness=burstiness, seed=seed)


def _engine(engine, max_num_seqs, max_num_batched_tokens, chunked_prefill, prefix_caching, preemption, swap_space,
            block_size, gpu_memory_utilization, num_gpu_blocks, weights_cpu, dtype, hw=None):
    """The engine with the user's flags over its defaults for ``hw`` (``get_engine``)."""
    from llmsim.common import size_flag
    from simulator.errors import PolicyError
    from simulator.serving.engines import get_engine
    if weights_cpu is not None and not (0 <= weights_cpu <= 100):
        raise PolicyError(f"--weights-cpu must be a percent within 0..100, got {weights_cpu!r}")
    if dtype is not None and dtype not in ("fp16", "bf16", "fp32"):
        raise PolicyError(f"--dtype: {dtype!r} is not one of fp16, bf16, fp32")
    swap = None
    if swap_space is not None:
        swap = 0.0 if str(swap_space).strip() in ("0", "0.0") else size_flag(swap_space, "--swap-space")
    return get_engine(engine, hw=hw, max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens,
                      chunked_prefill=chunked_prefill, prefix_caching=prefix_caching, preemption=preemption,
                      swap_space_bytes=swap, block_size=block_size, gpu_memory_utilization=gpu_memory_utilization,
                      num_gpu_blocks=num_gpu_blocks,
                      weights_cpu_frac=None if weights_cpu is None else weights_cpu / 100.0, dtype=dtype)


def _replicas(gpus, tp, pp, replicas) -> int:
    from simulator.errors import PolicyError
    for flag, v in (("--tp", tp), ("--pp", pp)):
        if v < 1:
            raise PolicyError(f"{flag} must be a positive integer, got {v}")
    if replicas is not None and replicas < 1:
        raise PolicyError(f"--replicas must be a positive integer, got {replicas}")
    per = tp * pp
    if gpus is None:
        return replicas or 1
    if gpus < 1 or gpus % per:
        raise PolicyError(f"--gpus {gpus} is not a multiple of --tp {tp} x --pp {pp} = {per} GPUs per replica")
    if replicas is not None and replicas * per != gpus:
        raise PolicyError(f"--gpus {gpus} != --replicas {replicas} x --tp {tp} x --pp {pp}")
    return gpus // per


ENGINE_HELP = "Serving engine: continuous (Orca/vLLM generic) or vllm (vLLM 0.15)."


# ------------------------------------------------------------------ simulate
def simulate(
    model: str = typer.Option(..., "--model", help="Preset name, Hugging Face id, or path to a config.json."),
    hardware: str = typer.Option(..., "--hardware", help="Shipped profile name or path to a YAML profile."),
    engine: str = typer.Option("continuous", "--engine", help=ENGINE_HELP),
    gpus: Optional[int] = typer.Option(None, "--gpus", help="GPUs in all: replicas x tp x pp (default: one replica)."),
    tp: int = typer.Option(1, "--tp", help="Tensor-parallel GPUs per replica."),
    pp: int = typer.Option(1, "--pp", help="Pipeline stages per replica."),
    replicas: Optional[int] = typer.Option(None, "--replicas", help="Replicas behind the router."),
    router: str = typer.Option("round_robin", "--router", help="round_robin or least_outstanding."),
    rate: Optional[float] = typer.Option(None, "--rate", help="Open loop: requests per second (Poisson or gamma)."),
    concurrency: Optional[int] = typer.Option(None, "--concurrency", help="Closed loop: concurrent users."),
    num_requests: Optional[int] = typer.Option(None, "--num-requests", help="Requests to simulate (a trace: its rows)."),
    prompt_len: Optional[int] = typer.Option(None, "--prompt-len", help="Mean prompt tokens."),
    output_len: Optional[int] = typer.Option(None, "--output-len", help="Mean output tokens."),
    length_dist: str = typer.Option("fixed", "--length-dist", help="fixed, uniform[:RATIO] or lognormal[:SIGMA]."),
    burstiness: float = typer.Option(1.0, "--burstiness", help="Gamma arrivals: 1 = Poisson, < 1 burstier."),
    trace: Optional[str] = typer.Option(None, "--trace", help="CSV/JSONL trace (or a shipped one: chat, summarization)."),
    think_time: float = typer.Option(0.0, "--think-time", help="Closed loop: seconds between a finish and the next send."),
    max_num_seqs: Optional[int] = typer.Option(None, "--max-num-seqs", help="Sequences per iteration."),
    max_num_batched_tokens: Optional[int] = typer.Option(None, "--max-num-batched-tokens", help="Tokens per iteration."),
    chunked_prefill: Optional[bool] = typer.Option(None, "--chunked-prefill/--no-chunked-prefill",
                                                   help="Split prompts over iterations (default: the engine's)."),
    prefix_caching: Optional[bool] = typer.Option(None, "--prefix-caching/--no-prefix-caching",
                                                  help="Reuse cached prefix blocks (default: the engine's)."),
    preemption: Optional[str] = typer.Option(None, "--preemption", help="recompute or swap (KV to CPU memory)."),
    swap_space: Optional[str] = typer.Option(None, "--swap-space", help="CPU memory per GPU for swapped KV (GiB)."),
    block_size: Optional[int] = typer.Option(None, "--block-size", help="Tokens per KV block."),
    gpu_memory_utilization: Optional[float] = typer.Option(None, "--gpu-memory-utilization", help="0..1."),
    num_gpu_blocks: Optional[int] = typer.Option(None, "--num-gpu-blocks", help="Override the KV blocks per GPU."),
    weights_cpu: Optional[float] = typer.Option(None, "--weights-cpu", help="Percent of the weights in CPU memory."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="fp16, bf16 or fp32 (default: the model's)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the arrivals and lengths."),
    ttft_slo: Optional[str] = typer.Option(None, "--ttft-slo", help="TTFT target for goodput, e.g. 1s or 500ms."),
    tpot_slo: Optional[str] = typer.Option(None, "--tpot-slo", help="TPOT target for goodput, e.g. 50ms."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON object."),
    out: Optional[str] = typer.Option(None, "--out", help="Write the per-request table, series, plots and report to DIR."),
):
    """Simulate serving a request stream: TTFT, TPOT, E2E, throughput, goodput, KV occupancy."""
    from llmsim.common import load_inputs
    from simulator.errors import WorkloadError
    from simulator.serving import metrics
    from simulator.serving.requests import check_rate
    from simulator.serving.simulate import simulate as run_simulation

    slo = metrics.SLO.parse(ttft_slo, tpot_slo)
    if (rate is None) == (concurrency is None) and trace is None:
        raise WorkloadError("give one of --rate (open loop) or --concurrency (closed loop)")
    if rate is not None and concurrency is not None:
        raise WorkloadError("--rate and --concurrency exclude each other")
    if rate is not None:
        check_rate(rate)
    if not math.isfinite(think_time) or think_time < 0:
        raise WorkloadError(f"--think-time must be a finite number of seconds >= 0, got {think_time!r}")
    spec = _stream_spec(num_requests, prompt_len, output_len, length_dist, burstiness, seed, trace)
    flags = (engine, max_num_seqs, max_num_batched_tokens, chunked_prefill, prefix_caching, preemption,
             swap_space, block_size, gpu_memory_utilization, num_gpu_blocks, weights_cpu, dtype)
    _engine(*flags)  # a bad flag fails before anything is loaded
    n_replicas = _replicas(gpus, tp, pp, replicas)
    if out is not None:
        check_output_dir(out, "--out")  # creates nothing: a failed simulation leaves no folder
    spec_model, hw = load_inputs(model, hardware)
    eng = _engine(*flags, hw=hw)
    if rate is not None:
        stream = spec.at_rate(rate)
    elif concurrency is not None:
        stream = spec.closed(concurrency, think_time)
    else:
        stream = spec.as_traced()
    result = run_simulation(spec_model, hw, stream, eng, tp=tp, pp=pp, replicas=n_replicas, router=router)
    summary = metrics.summary(result, slo)
    paths = None
    if out is not None:
        from simulator.serving.report import write_outputs
        paths = write_outputs(result, summary, out, "--out")
    from simulator.bands import json_fields, serving_bands
    bands = serving_bands(summary, hw, closed_loop=concurrency is not None)
    if as_json:
        print_json(summary | json_fields(bands["throughput_tok_s"])
                   | {"bands": {k: b.to_dict() for k, b in bands.items()}} | ({"files": paths} if paths else {}))
        return
    _print_summary(summary, paths)
    for key, (name, unit) in {"throughput_tok_s": ("throughput", "tok/s"), "ttft_mean_s": ("mean TTFT", "s"),
                              "tpot_mean_s": ("mean TPOT", "s"), "e2e_mean_s": ("mean E2E", "s")}.items():
        console().print(bands[key].line(name, unit), highlight=False, soft_wrap=True)


def _print_summary(s: dict, paths) -> None:
    from rich.table import Table
    con = console()
    con.print(f"[bold]llmsim simulate[/]: {s['model']} on {s['hardware']} · engine {s['engine']} · "
              f"tp={s['layout']['tp']} pp={s['layout']['pp']} x {s['replicas']} replica(s) · {s['dtype']}")
    con.print(f"stream: {s['stream']['source']} ({s['num_requests']} requests)")
    t = Table(show_header=True, header_style="bold")
    for col in ("seconds", "p50", "p90", "p99", "mean"):
        t.add_column(col, justify="left" if col == "seconds" else "right")
    for name, key in (("TTFT", "ttft_s"), ("TPOT", "tpot_s"), ("E2E", "e2e_s"), ("queue", "queue_s")):
        t.add_row(name, *["-" if s[key][q] is None else f"{s[key][q]:.4g}" for q in ("p50", "p90", "p99", "mean")])
    con.print(t)
    slo = s["slo"]
    targets = ", ".join(f"{k[:-2].upper()} <= {v:g} s" for k, v in slo.items() if v is not None) or "none"
    con.print(f"throughput {s['throughput_tok_s']:.1f} tokens/s · {s['requests_per_s']:.3f} requests/s · "
              f"goodput {s['goodput_rps']:.3f} requests/s (SLOs: {targets})")
    kv = s["kv_cache"]
    con.print(f"KV cache: {kv['blocks_per_server']} blocks of {kv['block_size']} tokens per server, peak "
              f"{100 * (kv['peak_used_frac'] or 0):.1f}% used · {s['preemptions']} preemptions")
    con.print(f"{s['simulated_iterations']} iterations simulated in {s['wall_s']:.2f} s")
    if paths:
        con.print(f"files: {paths['html']} (and the per-request table, series, plots)")


# ------------------------------------------------------------------ capacity
def capacity(
    model: str = typer.Option(..., "--model", help="Preset name, Hugging Face id, or path to a config.json."),
    hardware: str = typer.Option(..., "--hardware", help="Profiles to compare, comma-separated (names or YAML paths)."),
    engine: str = typer.Option("continuous", "--engine", help=ENGINE_HELP),
    prompt_len: Optional[int] = typer.Option(None, "--prompt-len", help="Mean prompt tokens."),
    output_len: Optional[int] = typer.Option(None, "--output-len", help="Mean output tokens."),
    trace: Optional[str] = typer.Option(None, "--trace", help="Lengths from a CSV/JSONL trace (or chat, summarization)."),
    length_dist: str = typer.Option("fixed", "--length-dist", help="fixed, uniform[:RATIO] or lognormal[:SIGMA]."),
    burstiness: float = typer.Option(1.0, "--burstiness", help="Gamma arrivals: 1 = Poisson."),
    num_requests: Optional[int] = typer.Option(None, "--num-requests", help="Requests per simulated rate (default 400)."),
    ttft_p99: Optional[str] = typer.Option(None, "--ttft-p99", help="p99 TTFT target, e.g. 1s."),
    tpot_p99: Optional[str] = typer.Option(None, "--tpot-p99", help="p99 TPOT target, e.g. 50ms."),
    rate: Optional[float] = typer.Option(None, "--rate", help="Target rate (requests/s): replicas and GPUs needed."),
    gpu_hour_price: Optional[str] = typer.Option(None, "--gpu-hour-price",
                                                 help="USD per GPU-hour (one, or one per --hardware)."),
    max_num_seqs: Optional[int] = typer.Option(None, "--max-num-seqs"),
    max_num_batched_tokens: Optional[int] = typer.Option(None, "--max-num-batched-tokens"),
    chunked_prefill: Optional[bool] = typer.Option(None, "--chunked-prefill/--no-chunked-prefill"),
    prefix_caching: Optional[bool] = typer.Option(None, "--prefix-caching/--no-prefix-caching"),
    swap_space: Optional[str] = typer.Option(None, "--swap-space", help="CPU memory per GPU for swapped KV (GiB)."),
    block_size: Optional[int] = typer.Option(None, "--block-size"),
    gpu_memory_utilization: Optional[float] = typer.Option(None, "--gpu-memory-utilization"),
    dtype: Optional[str] = typer.Option(None, "--dtype"),
    seed: int = typer.Option(0, "--seed"),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list, one entry per hardware profile."),
):
    """Highest request rate within p99 SLOs per replica, best layout, GPUs for a rate, cost."""
    from simulator.errors import WorkloadError
    from simulator.hardware import load_profile
    from simulator.models import get_model
    from simulator.serving.capacity import DEFAULT_CAPACITY_REQUESTS, capacity as run_capacity, check_slo
    from simulator.serving.metrics import SLO
    from simulator.serving.requests import check_rate

    slo = check_slo(SLO.parse(ttft_p99, tpot_p99, "--ttft-p99", "--tpot-p99"))
    if rate is not None:
        check_rate(rate)
    names = [h.strip() for h in hardware.split(",")]
    if not any(names):
        raise WorkloadError(f"--hardware: no profile named in {hardware!r}")
    if not all(names):
        raise WorkloadError(f"--hardware {hardware!r}: an empty name in the list; give profile names separated "
                            "by commas (e.g. t4-gcp,h100-sxm-8x)")
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise WorkloadError(f"--hardware {hardware!r}: {dup!r} is named twice; name each profile once")
    prices = _prices(gpu_hour_price, len(names))
    spec = _stream_spec(num_requests or (None if trace else DEFAULT_CAPACITY_REQUESTS), prompt_len, output_len,
                        length_dist, burstiness, seed, trace)
    if trace is not None and num_requests is None:
        spec = type(spec)(num_requests=min(spec.count, DEFAULT_CAPACITY_REQUESTS), burstiness=burstiness, seed=seed,
                          trace=spec.trace)
    flags = (engine, max_num_seqs, max_num_batched_tokens, chunked_prefill, prefix_caching, None, swap_space,
             block_size, gpu_memory_utilization, None, None, dtype)
    name = _engine(*flags).name  # a bad flag fails before any profile is loaded
    spec_model = get_model(model)
    profiles = [load_profile(n) for n in names]
    results = []
    con = console()
    with con.status("capacity search", spinner="dots") if not as_json else _nullcontext() as status:
        def progress(text):
            if status is not None:
                status.update(f"capacity search: {text}")
        for hw, price in zip(profiles, prices):
            results.append(run_capacity(spec_model, hw, spec, _engine(*flags, hw=hw), slo, rate, price,
                                        progress=progress))
    rows = [r.to_dict() for r in results]
    if as_json:
        print_json(rows)
        return
    _print_capacity(con, spec_model.name, name, slo, rate, rows)


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _prices(text, n: int):
    from simulator.errors import WorkloadError
    if text is None:
        return [None] * n
    parts = [p.strip() for p in str(text).split(",")]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise WorkloadError(f"--gpu-hour-price: {text!r} is not a number of USD (or one per --hardware)") from None
    if any(not (v > 0) or v == float("inf") for v in values):
        raise WorkloadError(f"--gpu-hour-price must be > 0 USD, got {text!r}")
    if len(values) == 1:
        return values * n
    if len(values) != n:
        raise WorkloadError(f"--gpu-hour-price gives {len(values)} prices for {n} --hardware profiles")
    return values


def _print_capacity(con, model: str, engine: str, slo, rate, rows) -> None:
    from rich.table import Table
    con.print(f"[bold]llmsim capacity[/]: {model} · engine {engine} · p99 TTFT <= "
              f"{slo.ttft_s if slo.ttft_s is not None else '-'} s, p99 TPOT <= "
              f"{slo.tpot_s if slo.tpot_s is not None else '-'} s" + (f" · target {rate:g} requests/s" if rate else ""))
    from rich import box
    t = Table(show_header=True, header_style="bold", box=box.SIMPLE_HEAD, pad_edge=False)
    cols = ["hardware", "max req/s", "tp x pp", "p99 TTFT", "p99 TPOT"]
    if rate is not None:
        cols += ["replicas", "GPUs"]
    if any("usd_per_million_tokens" in r for r in rows):
        cols += ["$/M tokens"]
    for c in cols:
        t.add_column(c, justify="left" if c == "hardware" else "right", no_wrap=True)
    for r in rows:
        if not r["feasible"]:
            t.add_row(r["hardware"], "[red]infeasible[/]", *["-"] * (len(cols) - 2))
            continue
        cells = [r["hardware"], f"{r['max_rate_rps']:.3g}",
                 f"{r['layout']['tp']} x {r['layout']['pp']}" + (" +swap" if r["kv_offload"] else ""),
                 f"{r['ttft_p99_s']:.3g} s", "-" if r["tpot_p99_s"] is None else f"{1e3 * r['tpot_p99_s']:.3g} ms"]
        if rate is not None:
            cells += [str(r["replicas"]), str(r["gpus"])]
        if "$/M tokens" in cols:
            v = r.get("usd_per_million_tokens")
            cells.append("-" if v is None else f"{v:.3g}")
        t.add_row(*cells)
    con.print(t)
    for r in rows:
        if not r["feasible"]:
            con.print(f"{r['hardware']}: {r['reason']}")


def register(app: typer.Typer) -> None:
    """Add ``simulate`` and ``capacity`` to the command-line app."""
    app.command(name="simulate")(simulate)
    app.command(name="capacity")(capacity)
