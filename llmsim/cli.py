"""``llmsim``: the command-line entry point.

Every subcommand imports what it needs lazily, so ``llmsim models`` starts fast and the
planner commands never import torch. Bad input (an ``LlmsimError`` or a usage error) prints
one line on stderr and exits 2; ``--json`` prints one JSON object on stdout.
"""

from __future__ import annotations

import signal
import sys
from typing import Optional

import typer

from llmsim.common import build_policy, check_output_dir, console, load_inputs, print_json, size_flag

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Capacity planner for LLM inference: offloading and parallelism strategies, "
                       "predicted and validated.")

DEFAULT_MODEL = "opt-30b"
DEFAULT_HARDWARE = "t4-gcp"
DEFAULT_PROMPT_LEN = 512
DEFAULT_GEN_LEN = 32

# Options shared by the commands (one definition, one help text).
MODEL_OPTION = typer.Option(DEFAULT_MODEL, "--model", help="Preset name, Hugging Face id, or path to a config.json.")
HARDWARE_OPTION = typer.Option(DEFAULT_HARDWARE, "--hardware", help="Shipped profile name or path to a YAML profile.")
PROMPT_LEN_OPTION = typer.Option(DEFAULT_PROMPT_LEN, "--prompt-len", help="Prompt tokens per sequence.")
GEN_LEN_OPTION = typer.Option(DEFAULT_GEN_LEN, "--gen-len", help="Generated tokens per sequence.")
EXPERT_OFFLOAD_HELP = ("Mixture of experts: offloaded experts prefetch (with their layer), fetch (those routed to, "
                      "after the routing) or cpu (computed on the CPU).")
ENGINE_OPTION = typer.Option("llmsim", "--engine",
                             help="The engine that runs it: llmsim, flexgen, accelerate, zero-inference.")
HEADROOM_OPTION = typer.Option(None, "--headroom",
                               help="Percent of GPU memory and host RAM left free: PCT or GPU_PCT,CPU_PCT "
                                    "(plan's default 10,0: vLLM's default gpu_memory_utilization 0.9 and the "
                                    "profile's own RAM reserve; predict's default 0).")


# ------------------------------------------------------------------ predict
@app.command()
def predict(
    model: str = MODEL_OPTION,
    hardware: str = HARDWARE_OPTION,
    prompt_len: int = PROMPT_LEN_OPTION,
    gen_len: int = GEN_LEN_OPTION,
    num_sequences: Optional[int] = typer.Option(None, "--num-sequences", help="Sequences in all (default: one block)."),
    gpu_batch_size: int = typer.Option(48, "--gpu-batch-size", help="Sequences per GPU batch."),
    num_gpu_batches: int = typer.Option(4, "--num-gpu-batches", help="GPU batches per block (zig-zag schedule)."),
    weights: str = typer.Option("10,90,0", "--weights", help="Weights placement in percent: GPU,CPU,disk."),
    cache: str = typer.Option("0,100,0", "--cache", help="KV-cache placement in percent: GPU,CPU,disk."),
    activations: str = typer.Option("0,100,0", "--activations", help="Activations placement in percent: GPU,CPU,disk."),
    cpu_attention: bool = typer.Option(True, "--cpu-attention/--gpu-attention",
                                       help="Decode attention over CPU-resident cache on the CPU."),
    compress_weights: bool = typer.Option(False, "--compress-weights", help="Group-wise 4-bit weights."),
    compress_cache: bool = typer.Option(False, "--compress-cache", help="Group-wise 4-bit KV cache."),
    no_overlap: bool = typer.Option(False, "--no-overlap", help="Run transfers and compute one after another."),
    disk_io: str = typer.Option("direct", "--disk-io", help="direct (O_DIRECT) or cached (page cache)."),
    dtype: str = typer.Option("fp16", "--dtype", help="fp16, bf16 or fp32."),
    expert_offload: str = typer.Option("prefetch", "--expert-offload", help=EXPERT_OFFLOAD_HELP),
    tp: int = typer.Option(1, "--tp", help="Tensor-parallel GPUs (chips) of the replica."),
    prefill_layout: str = typer.Option("1d-ws", "--prefill-layout",
                                       help="Partition layout of the prefill: 1d-ws, 2d-ws, wg-x, wg-xy, wg-xyz."),
    decode_layout: str = typer.Option("1d-ws", "--decode-layout", help="Partition layout of the decode (as above)."),
    attention_layout: str = typer.Option("heads", "--attention-layout",
                                         help="KV cache sharded over heads or batch (multi-query models)."),
    engine: str = ENGINE_OPTION,
    headroom: Optional[str] = HEADROOM_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print the estimate as one JSON object."),
):
    """Predict latency, throughput and peak memory of one policy run by an engine."""
    from simulator.cost import estimate
    from simulator.engines import get_engine
    from simulator.headroom import NO_HEADROOM, parse_headroom, with_headroom
    from simulator.policy import Workload

    eng = get_engine(engine)
    room = parse_headroom(headroom, default=NO_HEADROOM)
    spec, profile = load_inputs(model, hardware)
    hw = with_headroom(profile, room)  # the capacity the memory check sees
    workload = Workload(prompt_len=prompt_len, gen_len=gen_len, num_sequences=num_sequences)
    policy = build_policy(gpu_batch_size, num_gpu_batches, weights, cache, activations, cpu_attention,
                          compress_weights, compress_cache, no_overlap, disk_io, dtype, expert_offload=expert_offload)
    policy = policy.with_(tp=tp, prefill_layout=prefill_layout, decode_layout=decode_layout,
                          attention_layout=attention_layout)
    est = estimate(spec, hw, workload, policy, eng)
    from simulator.bands import estimate_band, json_fields
    band = estimate_band(est, hw)
    if as_json:
        print_json(est.to_dict() | json_fields(band) | {"headroom": room.to_dict(profile)})
        return
    from simulator.report import print_estimate
    print_estimate(console(), est, hw, room)
    console().print(band.line("throughput", "tok/s"), highlight=False, soft_wrap=True)


# ------------------------------------------------------------------ plan
@app.command()
def plan(
    model: str = MODEL_OPTION,
    hardware: str = HARDWARE_OPTION,
    prompt_len: int = PROMPT_LEN_OPTION,
    gen_len: int = GEN_LEN_OPTION,
    num_sequences: Optional[int] = typer.Option(None, "--num-sequences",
                                                help="Sequences in all (default: one block of the chosen policy)."),
    objective: str = typer.Option("throughput", "--objective", help="throughput or latency."),
    max_latency: Optional[float] = typer.Option(None, "--max-latency", help="Upper bound on latency, seconds."),
    min_throughput: Optional[float] = typer.Option(None, "--min-throughput", help="Lower bound, tokens/s."),
    gpu_mem: Optional[str] = typer.Option(None, "--gpu-mem", help="Override GPU memory (GiB, or e.g. 12GiB)."),
    cpu_mem: Optional[str] = typer.Option(None, "--cpu-mem", help="Override CPU memory (GiB)."),
    disk: Optional[str] = typer.Option(None, "--disk", help="Override disk capacity (GiB)."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="fp16, bf16 or fp32 (default: the best of those the profile rates)."),
    gpus: int = typer.Option(1, "--gpus", help="GPUs to use: every tensor x pipeline x data parallel layout of them."),
    engine: str = ENGINE_OPTION,
    compare: bool = typer.Option(True, "--compare/--no-compare",
                                 help="Also plan every other engine on the same inputs (the engine comparison)."),
    headroom: Optional[str] = HEADROOM_OPTION,
    no_compression: bool = typer.Option(False, "--no-compression",
                                        help="Never compress weights or KV cache to 4 bits (it costs accuracy)."),
    gpu_hour_price: Optional[float] = typer.Option(None, "--gpu-hour-price",
                                                   help="USD per GPU-hour: prints the cost per million generated "
                                                        "tokens."),
    as_json: bool = typer.Option(False, "--json", help="Print the plan as one JSON object."),
    report: Optional[str] = typer.Option(None, "--report",
                                         help="Write a Markdown + HTML report with plots and configs.csv into DIR."),
):
    """Search the policies an engine can run and recommend the best (the main job)."""
    from simulator.headroom import parse_headroom, with_headroom
    from simulator.policy import Policy, Workload
    from simulator.report import check_gpu_hour_price
    from simulator.search import SearchSpace, search

    room = parse_headroom(headroom)
    price = check_gpu_hour_price(gpu_hour_price)
    spec, hw = load_inputs(model, hardware)
    hw = hw.with_capacity(size_flag(gpu_mem, "--gpu-mem"), size_flag(cpu_mem, "--cpu-mem"), size_flag(disk, "--disk"))
    if report is not None:
        check_output_dir(report, "--report")  # creates nothing: a failed plan leaves no folder
    workload = Workload(prompt_len=prompt_len, gen_len=gen_len, num_sequences=num_sequences)
    if dtype is not None:
        Policy(dtype=dtype)  # validates the flag
    # dtype None: the search chooses among the dtypes the profile rates
    space = SearchSpace(dtype=dtype, **({"compress_weights": (False,), "compress_cache": (False,)}
                                        if no_compression else {}))
    from simulator.engines import get_engine
    from llmsim.common import Progress
    with Progress("llmsim plan") as progress:
        result = search(spec, with_headroom(hw, room), workload, objective=objective, max_latency_s=max_latency,
                        min_throughput_tok_s=min_throughput, space=space, gpus=gpus, engine=get_engine(engine),
                        compare=compare, progress=progress)
    from simulator.bands import estimate_band, json_fields
    band = estimate_band(result.estimate, hw)
    options = dict(band=band, headroom=room, gpu_hour_usd=price, compression=not no_compression)
    paths = None
    if report is not None:
        from simulator.report import write_plan_report
        paths = write_plan_report(result, hw, report, "--report", **options)
    if as_json:
        from simulator.report import gpus_used, plan_figures, recommendation_sentence, usd_per_million_tokens
        out = result.to_dict() | json_fields(band) | plan_figures(result, price)
        out |= {"recommendation": recommendation_sentence(result, hw, band, price), "headroom": room.to_dict(hw),
                "compression_searched": not no_compression}
        for name, other in result.engines.items():
            out["engines"][name].update(json_fields(estimate_band(other.estimate, hw)))
            e = other.estimate if other.feasible else None
            out["engines"][name]["usd_per_million_tokens"] = (
                usd_per_million_tokens(gpus_used(other.policy.to_dict()), price, e.throughput_tok_s)
                if e is not None and price is not None else None)
        if paths:
            out["report"] = paths
        print_json(out)
        return
    from simulator.report import print_plan
    con = console()
    print_plan(con, result, hw, **options)
    con.print(band.line("throughput", "tok/s"), highlight=False, soft_wrap=True)
    if paths:
        con.print(f"report: {paths['html']} (and report.md, configs.csv, {len(paths['images'])} plots)")


# ------------------------------------------------------------------ validate
# Flags of `validate` that choose the policy of one case (ignored by --plan, --suite, --records).
_POLICY_FLAGS = ("gpu_batch_size", "num_gpu_batches", "weights", "cache", "activations", "cpu_attention",
                 "compress_weights", "compress_cache", "no_overlap", "disk_io")


def _given(ctx: typer.Context) -> dict:
    """{parameter name: its flag} of the options given on the command line (not defaults)."""
    out = {}
    for p in ctx.command.params:
        src = ctx.get_parameter_source(p.name)
        if src is not None and src.name not in ("DEFAULT", "DEFAULT_MAP"):
            out[p.name] = "/".join([*p.opts, *getattr(p, "secondary_opts", [])])
    return out


def _check_mode_flags(given: dict) -> None:
    """--records, --suite and --plan each ignore flags of the other modes: refuse them,
    naming both flags, rather than ignore them without a word."""
    from simulator.errors import LlmsimError
    modes = (("schema", "prints the JSON schema of a record and takes only --json", {"as_json"}),
             ("records", "re-predicts the stored records and takes only --json", {"as_json"}),
             ("suite", "runs the suite's own cases and takes only --offload-dir, --record and --json",
              {"offload_dir", "record", "as_json"}),
             ("use_plan", "runs the policy `llmsim plan` recommends instead of the policy flags",
              set(given) - set(_POLICY_FLAGS)))
    for mode, what, allowed in modes:
        if mode in given:
            for name, flag in given.items():
                if name != mode and name not in allowed:
                    raise LlmsimError(f"{given[mode]} and {flag} cannot be used together: {given[mode]} {what}")


@app.command()
def validate(
    ctx: typer.Context,
    model: str = MODEL_OPTION,
    hardware: Optional[str] = typer.Option(None, "--hardware", help="The profile of THIS machine (name or YAML path)."),
    prompt_len: int = typer.Option(64, "--prompt-len"),
    gen_len: int = typer.Option(8, "--gen-len"),
    num_sequences: Optional[int] = typer.Option(None, "--num-sequences"),
    gpu_batch_size: int = typer.Option(4, "--gpu-batch-size"),
    num_gpu_batches: int = typer.Option(2, "--num-gpu-batches"),
    weights: str = typer.Option("100,0,0", "--weights"),
    cache: str = typer.Option("100,0,0", "--cache"),
    activations: str = typer.Option("100,0,0", "--activations"),
    cpu_attention: bool = typer.Option(False, "--cpu-attention/--gpu-attention"),
    compress_weights: bool = typer.Option(False, "--compress-weights"),
    compress_cache: bool = typer.Option(False, "--compress-cache"),
    no_overlap: bool = typer.Option(False, "--no-overlap"),
    disk_io: str = typer.Option("direct", "--disk-io"),
    expert_offload: str = typer.Option("prefetch", "--expert-offload", help=EXPERT_OFFLOAD_HELP),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="Default: fp16 on CUDA, fp32 on a CPU device."),
    use_plan: bool = typer.Option(False, "--plan", help="Run the policy `llmsim plan` recommends instead of the flags."),
    device: str = typer.Option("auto", "--device", help="auto, cuda or cpu."),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch CPU threads (default: the profile's)."),
    repeats: int = typer.Option(1, "--repeats", help="Runs of the case; the fastest is kept."),
    offload_dir: Optional[str] = typer.Option(None, "--offload-dir", help="Where the disk tier lives (default: a temp dir here)."),
    record: Optional[str] = typer.Option(None, "--record", help="Append a record of the run to DIR (e.g. validate/records)."),
    suite: Optional[str] = typer.Option(None, "--suite", help="Run a suite instead: ci (the CPU suite) or serving (continuous batching)."),
    records: Optional[str] = typer.Option(None, "--records", help="Re-predict every record in DIR with today's model."),
    schema: bool = typer.Option(False, "--schema", help="Print the JSON schema of a record and exit."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
):
    """Run a policy on the torch executor and compare it with the prediction."""
    _check_mode_flags(_given(ctx))
    if schema:
        from validate.record_schema import json_schema
        return print_json(json_schema())
    from llmsim import validate_command as commands
    if records is not None:
        return commands.check_records_command(records, as_json)
    if suite is not None:
        return commands.suite_command(suite, as_json, offload_dir, record)
    policy_flags = dict(gpu_batch_size=gpu_batch_size, num_gpu_batches=num_gpu_batches, weights=weights, cache=cache,
                        activations=activations, cpu_attention=cpu_attention, compress_weights=compress_weights,
                        compress_cache=compress_cache, no_overlap=no_overlap, disk_io=disk_io,
                        expert_offload=expert_offload)
    return commands.case_command(model, hardware, prompt_len, gen_len, num_sequences, policy_flags, dtype, use_plan,
                                 device, threads, repeats, offload_dir, record, as_json)


# ------------------------------------------------------------------ profile
@app.command()
def profile(
    out: Optional[str] = typer.Option(None, "--out", help="Where to write the YAML profile (default ./llmsim-profile.yaml)."),
    quick: bool = typer.Option(False, "--quick", help="A short run (under 60 s): fewer sizes and repeats."),
    device: str = typer.Option("auto", "--device", help="auto (cuda:0 if present, else cpu), cpu, cuda or cuda:N."),
    disk_dir: Optional[str] = typer.Option(None, "--disk-dir", help="Where the disk test writes (default: --out's folder)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for torch (default: torch's default)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing --out file."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary."),
):
    """Measure this machine (PCIe, GPU, CPU, disk, interconnect) into a YAML profile."""
    from llmsim.profile_command import run
    return run(out, quick, device, disk_dir, force, as_json, threads=threads)


# ------------------------------------------------------------------ listings
@app.command()
def models(as_json: bool = typer.Option(False, "--json", help="Print JSON.")):
    """List the model presets."""
    from simulator.models import PRESETS
    rows = [{**m.to_dict(), "hf_ids": list(m.hf_ids)} for m in PRESETS.values()]
    if as_json:
        print_json(rows)
        return
    from rich.table import Table
    t = Table(title="Model presets (also accepted: their Hugging Face ids, or a path to a config.json)")
    for col in ("name", "params", "layers", "hidden", "heads/kv", "ffn", "vocab", "experts", "dtype"):
        t.add_column(col, justify="left" if col in ("name", "dtype") else "right")
    for m in PRESETS.values():
        t.add_row(m.name, f"{m.num_parameters() / 1e9:.2f} B", str(m.num_layers), str(m.hidden_size),
                  f"{m.num_heads}/{m.num_kv_heads}", str(m.ffn_dim), str(m.vocab_size),
                  f"{m.experts_per_token}/{m.num_experts}" if m.is_moe else "-", m.dtype)
    console().print(t)


@app.command()
def hardware(as_json: bool = typer.Option(False, "--json", help="Print JSON."),
             schema: bool = typer.Option(False, "--schema", help="Print the JSON schema of a profile and exit.")):
    """List the shipped hardware profiles (hardware_profiles/data/*.yaml)."""
    if schema:
        from simulator.profile_schema import json_schema
        return print_json(json_schema())
    from simulator.hardware import DATA_DIR, list_profiles, load_profile
    profiles = [load_profile(n) for n in list_profiles()]
    if as_json:
        print_json([{**p.summary(), "path": p.path} for p in profiles])
        return
    from rich.table import Table
    t = Table(title=f"Hardware profiles in {DATA_DIR}")
    for col in ("name", "sources", "device", "memory", "mem bw", "fp16", "host RAM", "h2d", "disk read"):
        t.add_column(col)
    for p in profiles:
        s = p.summary()
        fp16 = dict(p.device.matmul_flop_per_s).get("fp16")
        t.add_row(p.name, s["sources"], s["device"], f"{s['gpu_memory_GiB']:.1f} GiB",
                  f"{s['device_mem_GBps']:.0f} GB/s", f"{fp16 / 1e12:.0f} TFLOP/s" if fp16 else "-",
                  f"{s['cpu_memory_GiB']:.0f} GiB", f"{s['h2d_GBps']:.1f} GB/s", f"{s['disk_read_GBps']:.1f} GB/s")
    console().print(t)


# ------------------------------------------------------------------ serving: simulate, capacity
from llmsim.serving_command import register as _register_serving  # noqa: E402

_register_serving(app)

# ------------------------------------------------------------------ sweep: many cases on Dask
from llmsim.sweep_command import register as _register_sweep  # noqa: E402

_register_sweep(app)


# ------------------------------------------------------------------ entry point
def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _on_sigint(signum, frame):
    """Ctrl-C: remember it (an exception raised inside a finalizer is dropped by Python; the
    flag is not, and no file is committed after it) and raise ``Interrupted``."""
    from simulator.errors import Interrupted
    from simulator.files import request_interrupt
    request_interrupt()
    raise Interrupted()


def _quiet_unraisable(previous):
    """An ``Interrupted`` raised inside a finalizer is reported by the flag, not by a
    traceback; anything else goes to the previous hook."""
    def hook(unraisable):
        from simulator.errors import Interrupted
        if isinstance(unraisable.exc_value, Interrupted):
            return
        previous(unraisable)
    return hook


def _given_value(argv: list[str], param) -> str | None:
    """The text given for ``param`` on the command line (its last occurrence)."""
    value = None
    opts = [*getattr(param, "opts", []), *getattr(param, "secondary_opts", [])]
    for i, tok in enumerate(argv):
        for opt in opts:
            if tok == opt and i + 1 < len(argv):
                value = argv[i + 1]
            elif tok.startswith(opt + "="):
                value = tok[len(opt) + 1:]
    return value


def _usage_message(e, argv: list[str]) -> str:
    msg = _one_line(e.format_message())
    param = getattr(e, "param", None)
    if param is not None:
        value = _given_value(argv, param)
        if value is not None and repr(value) not in msg:
            msg += f" (got {value!r})"
    return msg


def main(argv: list[str] | None = None) -> int:
    """Run the CLI: bad input -> one line on stderr, exit 2; Ctrl-C -> one line, exit 130."""
    from simulator.errors import Interrupted, LlmsimError
    from simulator.files import clear_interrupt, interrupt_requested

    clear_interrupt()
    previous = signal.getsignal(signal.SIGINT)
    try:
        signal.signal(signal.SIGINT, _on_sigint)
    except ValueError:  # not the main thread (e.g. called from a worker): keep Python's default
        previous = None
    previous_hook = sys.unraisablehook
    sys.unraisablehook = _quiet_unraisable(previous_hook)
    args = list(sys.argv[1:] if argv is None else argv)

    def interrupted():
        signal.signal(signal.SIGINT, signal.SIG_IGN) if previous is not None else None  # one line, however many presses
        sys.stderr.write("llmsim: interrupted\n")
        sys.exit(130)

    try:
        rv = typer.main.get_command(app).main(args=args, prog_name="llmsim", standalone_mode=False)
    except (Interrupted, KeyboardInterrupt, typer.Abort):
        interrupted()
    except typer.TyperException as e:  # usage errors of the vendored click (bad flag, missing value)
        if type(e).__name__ == "NoArgsIsHelpError":  # bare `llmsim`: the help was printed
            sys.exit(0)
        sys.stderr.write(f"llmsim: error: {_usage_message(e, args)}\n")
        sys.exit(2)
    except LlmsimError as e:
        if interrupt_requested():  # the error came from the interruption (a refused commit)
            interrupted()
        sys.stderr.write(f"llmsim: error: {_one_line(e)}\n")
        sys.exit(2)
    except BrokenPipeError:
        sys.exit(0)
    finally:
        sys.unraisablehook = previous_hook
        if previous is not None:
            # In-process callers (tests) get their handler back. The command line ignores a
            # Ctrl-C from here on: the work is done, and at interpreter exit the default
            # action would kill the process silently.
            signal.signal(signal.SIGINT, previous if argv is not None else signal.SIG_IGN)
    if interrupt_requested():  # Ctrl-C whose exception a library swallowed
        interrupted()
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
