"""The capacity-planning report (issue 12.3): the recommendation sentence and its numbers, the
sections of the Markdown and HTML pages, configs.csv, the tp/pp/dp columns, the frontier of
what is plotted, the percent formatter, the memory headroom, --no-compression and the cost
per million tokens."""

from __future__ import annotations

from html import unescape

import json

import pandas as pd
import pytest

from helpers import run_cli, run_json
from simulator.bands import estimate_band
from simulator.hardware import load_profile
from simulator.headroom import (DEFAULT_CPU_HEADROOM_FRAC, DEFAULT_HEADROOM_FRAC, NO_HEADROOM, Headroom, parse_headroom,
                               with_headroom)
from simulator.models import get_model
from simulator.policy import Placement, Policy, Workload
from simulator.report import (compression_note, configs_frame, cpu_attention_applies, layout_rows, number_text,
                              pareto_points, placement_text, plan_figures, plan_markdown, policy_text, profile_rows,
                              recommendation_sentence, tpot_s, ttft_s, usd_per_million_tokens, usd_text,
                              write_plan_report)
from simulator.search import SearchSpace, layouts_for, search
from simulator.units import GiB, format_duration, format_percent


# ------------------------------------------------------------------ the percent formatter
@pytest.mark.parametrize("frac,text", [
    (0.0, "0"), (1e-12, "0"), (4.821e-5, "<0.1"), (0.000999, "<0.1"), (0.001, "0.1"), (0.004092, "0.4"),
    (0.02, "2"), (0.025, "2.5"), (0.0996, "10"), (0.1, "10"), (0.104, "10"), (0.4449, "44"), (0.5, "50"),
    (0.9, "90"), (0.904, "90.4"), (0.9957, "99.6"), (0.9995, ">99.9"), (1 - 1e-7, ">99.9"), (1.0, "100"),
    (1 + 1e-12, "100"), (float("nan"), "-"),
])
def test_format_percent_cases(frac, text):
    assert format_percent(frac) == text


def test_placements_print_with_the_one_formatter():
    # The case the issue quotes ("weights 0.004821/100/0"): an LP optimum's dust of weights on the GPU.
    assert placement_text({"gpu_frac": 4.821e-5, "cpu_frac": 1 - 4.821e-5, "disk_frac": 0.0}) == "<0.1/>99.9/0"
    assert placement_text({"gpu_frac": 0.02, "cpu_frac": 0.74, "disk_frac": 0.24}) == "2/74/24"


def test_cpu_attention_is_printed_only_where_the_cache_is_off_the_gpu():
    on_gpu = Policy(cache=Placement(1, 0, 0), cpu_attention=True).to_dict()
    on_cpu = Policy(cache=Placement(0.3, 0.7, 0), cpu_attention=True).to_dict()
    assert not cpu_attention_applies(on_gpu) and "cpu attention" not in policy_text(on_gpu)
    assert cpu_attention_applies(on_cpu) and "cpu attention" in policy_text(on_cpu)
    assert "cpu attention" not in policy_text(Policy(cache=Placement(0, 1, 0), cpu_attention=False).to_dict())


# ------------------------------------------------------------------ cost, TTFT, TPOT by hand
def test_cost_per_million_tokens_by_hand():
    # 8 GPUs at $2.50 an hour make 100 tok/s: a million tokens take 10^4 s = 2.78 h of 8 GPUs.
    assert usd_per_million_tokens(8, 2.5, 100.0) == pytest.approx(8 * 2.5 * (1e6 / 100.0) / 3600, rel=1e-12)
    assert usd_per_million_tokens(8, 2.5, 100.0) == pytest.approx(55.5556, rel=1e-5)


def test_plan_json_carries_cost_ttft_tpot_and_the_sentence():
    d = run_json("plan", "--model", "opt-6.7b", "--prompt-len", "128", "--gen-len", "8", "--gpu-hour-price", "0.35")
    e, p = d["estimate"], d["policy"]
    gpus = p["tp"] * p["pp"] * p["dp"]
    assert d["gpus_used"] == gpus and d["gpu_hour_usd"] == 0.35
    assert d["usd_per_million_tokens"] == pytest.approx(gpus * 0.35 / 3600 * 1e6 / e["throughput_tok_s"], rel=1e-12)
    assert d["ttft_s"] == pytest.approx(e["prefill_latency_s"] / e["num_blocks"], rel=1e-12)
    assert d["tpot_s"] == pytest.approx(e["decode_latency_s"] / e["num_blocks"] / (8 - 1), rel=1e-12)
    s = d["recommendation"]
    assert s.startswith("Run opt-6.7b on t4-gcp with llmsim") and f"{number_text(e['throughput_tok_s'])} tok/s" in s
    assert f"first token after {format_duration(d['ttft_s'])}" in s
    assert f"{format_duration(d['tpot_s'])} per output" in s
    assert f"{usd_text(d['usd_per_million_tokens'])} per million generated tokens" in s
    for name, eng in d["engines"].items():
        if eng["feasible"]:
            g = eng["policy"]["tp"] * eng["policy"]["pp"] * eng["policy"]["dp"]
            assert eng["usd_per_million_tokens"] == pytest.approx(g * 0.35 / 3600 * 1e6 / eng["throughput_tok_s"],
                                                                  rel=1e-12), name
    without = run_json("plan", "--model", "opt-6.7b", "--prompt-len", "128", "--gen-len", "8")
    assert without["usd_per_million_tokens"] is None and "per million" not in without["recommendation"]


@pytest.mark.parametrize("price", ["0", "-1", "nan", "inf"])
def test_bad_gpu_hour_price(price):
    code, out, err = run_cli("plan", "--gpu-hour-price", price)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "--gpu-hour-price must be a number of USD > 0" in err


# ------------------------------------------------------------------ headroom
def test_headroom_changes_the_capacity_by_exactly_the_margin():
    hw = load_profile("t4-gcp")
    h = Headroom(0.10, 0.05)
    room = with_headroom(hw, h)
    assert room.device.usable_bytes == pytest.approx(hw.device.usable_bytes - 0.10 * hw.device.usable_bytes, rel=1e-15)
    assert room.cpu.usable_bytes == pytest.approx(hw.cpu.usable_bytes - 0.05 * hw.cpu.usable_bytes, rel=1e-15)
    assert room.disk.capacity_bytes == hw.disk.capacity_bytes
    assert h.margin_bytes(hw) == {"gpu": 0.10 * 15 * GiB, "cpu": 0.05 * 204 * GiB, "disk": 0.0}
    # ... and that is the capacity estimate() sees (the memory model and the search read Terms.capacity_bytes)
    d0 = run_json("predict", "--headroom", "0")
    d = run_json("predict", "--headroom", "10,5")
    for tier, frac in (("gpu", 0.10), ("cpu", 0.05)):
        assert d0["capacity_bytes"][tier] - d["capacity_bytes"][tier] == pytest.approx(
            frac * d0["capacity_bytes"][tier], rel=1e-12)
    assert d["capacity_bytes"]["disk"] == d0["capacity_bytes"]["disk"]
    assert d["headroom"]["gpu_frac"] == 0.10 and d["headroom"]["cpu_frac"] == 0.05


def test_headroom_on_a_cpu_only_machine_uses_the_cpu_figure_for_both_tiers():
    hw = load_profile("cpu-2core")
    room = with_headroom(hw, Headroom(0.3, 0.1))
    assert room.cpu.usable_bytes == pytest.approx(0.9 * hw.cpu.usable_bytes, rel=1e-15)
    assert room.device.usable_bytes == pytest.approx(0.9 * hw.device.usable_bytes, rel=1e-15)


def test_the_default_plan_keeps_the_default_margin_free():
    d = run_json("plan")
    assert (d["headroom"]["gpu_frac"], d["headroom"]["cpu_frac"]) == (DEFAULT_HEADROOM_FRAC, DEFAULT_CPU_HEADROOM_FRAC)
    assert "gpu_memory_utilization" in d["headroom"]["source"] or "gpu-memory-utilization" in d["headroom"]["source"]
    cap, peak = d["estimate"]["capacity_bytes"], d["estimate"]["peak_memory_bytes"]
    assert cap["gpu"] == pytest.approx(0.9 * 15 * GiB, rel=1e-12) and cap["cpu"] == pytest.approx(1.0 * 204 * GiB,
                                                                                                   rel=1e-12)
    assert peak["gpu"] <= cap["gpu"] and peak["cpu"] <= cap["cpu"]
    assert d["headroom"]["margin_bytes"]["gpu"] == pytest.approx(0.1 * 15 * GiB, rel=1e-12)
    full = run_json("plan", "--headroom", "0")  # today's plan, to the last byte of the profile
    assert full["estimate"]["capacity_bytes"]["gpu"] == 15 * GiB
    assert full["estimate"]["peak_memory_bytes"]["gpu"] > cap["gpu"]  # it would not fit under the margin


@pytest.mark.parametrize("value,message", [
    ("lots", "--headroom: 'lots' is not a number of percent"),
    ("95", "--headroom: '95' must be a percent from 0 to 90"),
    ("-1", "must be a percent from 0 to 90"), ("10,5,1", "is not PCT or GPU_PCT,CPU_PCT"),
    ("nan", "'nan' must be a percent"),
])
def test_bad_headroom(value, message):
    for cmd in ("plan", "predict"):
        code, out, err = run_cli(cmd, "--headroom", value)
        assert code == 2 and out == "" and err.count("\n") == 1 and message in err, (cmd, err)


def test_parse_headroom():
    assert parse_headroom(None) == Headroom()
    assert (parse_headroom("20").gpu_frac, parse_headroom("20").cpu_frac) == (0.2, 0.2)
    assert (parse_headroom("10,0").gpu_frac, parse_headroom("10,0").cpu_frac) == (0.1, 0.0)


# ------------------------------------------------------------------ --no-compression
def test_no_compression_never_compresses():
    d = run_json("plan", "--no-compression")
    assert d["compression_searched"] is False
    assert not d["policy"]["compress_weights"] and not d["policy"]["compress_cache"]
    for name, e in d["engines"].items():
        if e["policy"]:
            assert not e["policy"]["compress_weights"] and not e["policy"]["compress_cache"], name
    assert d["engines"]["zero-inference"]["policy"] is not None  # it compresses by choice otherwise (below)
    code, out, err = run_cli("plan", "--no-compression")
    assert code == 0 and "4-bit compression: not searched (--no-compression)" in out and "quality:" not in out
    default = run_json("plan")
    assert default["policy"]["compress_weights"]  # the default plan does compress: the flag changed something
    assert "0.725 -> 0.724" in compression_note(default["policy"]) and compression_note(d["policy"]) == ""
    assert default["engines"]["zero-inference"]["policy"]["compress_weights"]
    # No candidate of any engine was even searched with compression.
    spec, hw = get_model("opt-30b"), with_headroom(load_profile("t4-gcp"), Headroom())
    plan = search(spec, hw, Workload(512, 32), space=SearchSpace(compress_weights=(False,), compress_cache=(False,)))
    for p in [plan, *plan.engines.values()]:
        if p.candidates is not None and len(p.candidates):
            assert not p.candidates["compress_weights"].any() and not p.candidates["compress_cache"].any(), p.engine


# ------------------------------------------------------------------ the report of the default plan
@pytest.fixture(scope="module")
def default_report(tmp_path_factory):
    spec, hw = get_model("opt-30b"), load_profile("t4-gcp")
    room = Headroom()
    plan = search(spec, with_headroom(hw, room), Workload(512, 32))
    band = estimate_band(plan.estimate, hw)
    out = tmp_path_factory.mktemp("report")
    paths = write_plan_report(plan, hw, out, band=band, headroom=room, gpu_hour_usd=0.35)
    return plan, hw, band, out, paths


def _table_after(md: str, head: str) -> list[str]:
    """The body rows of the Markdown table whose header line is ``head``."""
    lines = md[md.index(head):].splitlines()[2:]
    out = []
    for line in lines:
        if not line.startswith("|"):
            break
        out.append(line)
    return out


def test_the_report_files(default_report):
    plan, hw, band, out, paths = default_report
    assert {p.name for p in out.iterdir()} == {"report.md", "report.html", "configs.csv", "memory.png",
                                               "components.png", "pareto.png"}
    assert paths["csv"] == str(out / "configs.csv")
    html = (out / "report.html").read_text()
    assert html.startswith("<!doctype html>") and html.endswith("</body></html>")
    assert html.count('src="data:image/png;base64,') == 3 and "{{" not in html and "{%" not in html


def test_the_recommendation_sentence_carries_the_plans_numbers(default_report):
    plan, hw, band, out, _ = default_report
    e = plan.estimate
    md = (out / "report.md").read_text()
    sentence = recommendation_sentence(plan, hw, band, 0.35)
    assert f"**{sentence}**" in md and md.index("## Recommendation") < md.index(sentence)
    first = e.prefill_latency_s / e.num_blocks
    per = e.decode_latency_s / e.num_blocks / (e.workload["gen_len"] - 1)
    assert ttft_s(e) == first and tpot_s(e) == per
    usd = 1 * 0.35 / 3600 * 1e6 / e.throughput_tok_s  # one T4
    for text in (f"{number_text(e.throughput_tok_s)} tok/s", f"first token after {format_duration(first)}",
                 f"then {format_duration(per)} per output token", f"{usd_text(usd)} per million generated tokens",
                 f"{e.num_sequences} sequences of 32 tokens in {format_duration(e.total_latency_s)}",
                 "weights in CPU RAM as 4-bit", "with llmsim"):
        assert text in sentence, text
    assert plan_figures(plan, 0.35)["usd_per_million_tokens"] == pytest.approx(usd, rel=1e-12)
    html = (out / "report.html").read_text()
    assert sentence in unescape(html)


def test_the_report_reads_top_to_bottom(default_report):
    plan, hw, band, out, _ = default_report
    md = (out / "report.md").read_text()
    order = ["## Recommendation", "| throughput |", "| error band |", "| time to first token |",
             "| time per output token |", "| cost per million generated tokens | $",
             "## The best plan of each engine on this machine", "## Plots", "## Pareto frontier",
             "## Where the figures come from", "## Search"]
    pos = [md.index(s) for s in order]
    assert pos == sorted(pos)
    assert f"| error band | {band.text() if band.evidence else 'no error band: ' + band.note} |" in md
    # The compression the plan chose, with what it costs (FlexGen's Table 5) and the way out.
    assert plan.policy.compress_weights
    assert "0.725 -> 0.724" in md and "arXiv 2303.06865" in md and "--no-compression" in md
    # The headroom and the profile's sources.
    assert Headroom().text() in md
    assert "figures of the t4-gcp profile are" in md
    for name in ("flexgen", "accelerate", "zero-inference"):
        assert f"| {name} |" in md


def test_the_engine_table_holds_every_engines_figures(default_report):
    plan, hw, band, out, _ = default_report
    md = (out / "report.md").read_text()
    for name, (pol, est, note) in plan.comparison().items():
        if est is None:
            continue
        line = next(line for line in md.splitlines() if line.startswith(f"| {name} |"))
        assert f"| {est.throughput_tok_s:.3f} |" in line and f"| {format_duration(ttft_s(est))} |" in line
        assert f"| {usd_text(usd_per_million_tokens(1, 0.35, est.throughput_tok_s))} |" in line


def test_configs_csv_rows_are_the_feasible_candidates(default_report):
    plan, hw, band, out, _ = default_report
    csv = pd.read_csv(out / "configs.csv")
    expected = {plan.engine: plan, **plan.engines}
    for name, p in expected.items():
        rows = csv[csv["engine"] == name]
        if p.candidates is None or not len(p.candidates):
            assert rows.empty
            continue
        feas = p.candidates[p.candidates["solved"] & p.candidates["feasible"]]
        assert len(rows) == len(feas) > 0, name
        assert sorted(rows["throughput_tok_s"]) == pytest.approx(sorted(feas["throughput_tok_s"]), rel=1e-12)
        assert set(rows["tp"]) <= {1} and set(rows["dtype"]) <= set(feas["dtype"])
    assert len(csv) == len(configs_frame(plan))
    assert {"tp", "pp", "dp", "weights_gpu_frac", "cache_cpu_frac", "total_latency_s"} <= set(csv.columns)
    md = (out / "report.md").read_text()
    assert f"`configs.csv` ({len(csv)} rows)" in md


def test_the_pareto_table_has_tp_pp_dp_columns(default_report):
    plan, hw, band, out, _ = default_report
    md = (out / "report.md").read_text()
    head = "| tp | pp | dp | batch x batches | dtype | weights | cache | activations |"
    assert head in md
    rows = _table_after(md, head)
    assert len(rows) == len(plan.pareto())
    # CPU attention shows only where the cache is off the GPU.
    for line, (_, r) in zip(rows, plan.pareto().iterrows()):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[:3] == [str(r.tp), str(r.pp), str(r.dp)]
        assert cells[10] == ("yes" if r.cpu_attention and r.cache_gpu_frac < 1 else "no")


def test_the_plot_draws_no_point_above_its_frontier(default_report):
    plan = default_report[0]
    pts = pareto_points(plan)
    assert {"candidate", "engine", "plan"} <= set(pts["kind"])
    front = pts[pts["on_frontier"]]
    for _, p in pts.iterrows():
        dominated = front[(front["total_latency_s"] <= p.total_latency_s * (1 + 1e-12))
                          & (front["throughput_tok_s"] >= p.throughput_tok_s * (1 - 1e-12))]
        assert len(dominated), f"{p.label} at ({p.total_latency_s}, {p.throughput_tok_s}) is above the frontier"


def test_an_engine_above_the_candidates_moves_the_frontier(default_report):
    """The issue's case: another engine's plan better than every candidate of the plan's
    engine. The frontier is of what is drawn, so it passes through that point."""
    from dataclasses import replace
    plan = default_report[0]
    e = plan.estimate
    fast = replace(e, engine="fake", throughput_tok_s=10 * e.throughput_tok_s, total_latency_s=e.total_latency_s / 10)
    other = replace(plan, engine="fake", estimate=fast, candidates=None, engines={})
    pts = pareto_points(replace(plan, engines={**plan.engines, "fake": other}))
    fake = pts[pts["label"] == "engine: fake"]
    assert len(fake) == 1 and bool(fake["on_frontier"].iloc[0])
    assert not pts[pts["kind"] != "engine"]["on_frontier"].any()  # it dominates every llmsim point


def test_profile_rows_say_which_figures_are_measured(default_report):
    plan, hw, band, out, _ = default_report
    rows = profile_rows(hw, plan.estimate.bottleneck, plan.policy.dtype)
    by_key = {r["key"]: r for r in rows}
    assert by_key["gpu.fp16_TFLOPs"]["source"] == "measured" and by_key["gpu.fp32_TFLOPs"]["source"] == "datasheet"
    assert all(r["source"] == hw.key_source(r["key"]) for r in rows)
    assert {k for k, r in by_key.items() if r["bound"]} == set(hw.bound_sources(plan.estimate.bottleneck,
                                                                                plan.policy.dtype))
    assert by_key["cpu.reserved_GiB"]["value"] == "4.0 GiB"  # the profile's figure, not the headroom's
    md = (out / "report.md").read_text()
    assert "| `gpu.fp16_TFLOPs` | 24 TFLOP/s | measured | bound |" in md


# ------------------------------------------------------------------ several GPUs
@pytest.fixture(scope="module")
def multi_gpu_plan():
    spec, hw = get_model("opt-1.3b"), load_profile("dgx-a100-8x")
    space = SearchSpace(gpu_batch_sizes=(1, 8), num_gpu_batches=(1,), compress_weights=(False,),
                        compress_cache=(False,), cpu_attention=(False,), dtype="fp16")
    plan = search(spec, with_headroom(hw, Headroom()), Workload(128, 8), space=space, gpus=4, compare=False)
    return plan, hw


def test_the_layout_table_for_several_gpus(multi_gpu_plan):
    plan, hw = multi_gpu_plan
    assert plan.feasible and plan.gpus == 4
    rows = layout_rows(plan)
    layouts = {(r["tp"], r["pp"], r["dp"]) for r in rows}
    assert layouts <= set(layouts_for(get_model("opt-1.3b"), hw, 4)) and len(layouts) == len(rows) >= 3
    rec = [r for r in rows if r["recommended"]]
    assert len(rec) == 1
    p, e = plan.policy, plan.estimate
    assert (rec[0]["tp"], rec[0]["pp"], rec[0]["dp"]) == (p.tp, p.pp, p.dp)
    assert rec[0]["throughput_tok_s"] == e.throughput_tok_s and rec[0]["prefill_layout"] == p.prefill_layout
    md = plan_markdown(plan, hw, {})
    head = "| tp | pp | dp | batch | dtype | throughput (tok/s) | latency | prefill layout | decode layout |"
    assert "## Parallel layouts on 4 GPUs" in md and head in md
    table = _table_after(md, head)
    assert len(table) == len(rows)
    assert [tuple(int(c) for c in line.strip("|").split("|")[:3]) for line in table] == \
        [(r["tp"], r["pp"], r["dp"]) for r in rows]
    assert sum("| recommended |" in line for line in table) == 1
    # The Pareto table tells the layouts apart (two "1 x 1" rows of different throughputs once).
    pareto = plan.pareto()
    keys = list(zip(pareto.tp, pareto.pp, pareto.dp, pareto.gpu_batch_size, pareto.num_gpu_batches))
    assert len(set(keys)) == len(keys)


def test_the_multi_gpu_sentence_counts_the_gpus(multi_gpu_plan):
    plan, hw = multi_gpu_plan
    p = plan.policy
    s = recommendation_sentence(plan, hw, None, 2.0)
    n = p.tp * p.pp * p.dp
    assert n == 4 and f"{n} GPUs (" in s
    usd = usd_per_million_tokens(n, 2.0, plan.estimate.throughput_tok_s)
    assert f"{usd_text(usd)} per million generated tokens ($2.00 per GPU-hour, 4 GPUs)" in s


# ------------------------------------------------------------------ the command line
def test_a_plan_without_a_feasible_policy_still_reports(tmp_path):
    code, out, err = run_cli("plan", "--model", "opt-175b", "--gpu-mem", "16", "--cpu-mem", "30", "--disk", "30",
                             "--report", str(tmp_path / "r"), "--json")
    assert code == 0, err
    d = json.loads(out)
    assert d["feasible"] is False and d["ttft_s"] is None and d["usd_per_million_tokens"] is None
    md = (tmp_path / "r" / "report.md").read_text()
    assert "**No policy of llmsim runs opt-175b on t4-gcp here: nothing fits" in md
    assert "## Where the figures come from" in md
    names = {p.name for p in (tmp_path / "r").iterdir()}
    assert names == {"report.md", "report.html", "configs.csv", "memory.png", "pareto.png"}



def test_plan_report_prints_the_sentence_and_writes_the_csv(tmp_path):
    code, out, err = run_cli("plan", "--model", "opt-1.3b", "--report", str(tmp_path / "r"), "--gpu-hour-price", "1")
    assert code == 0, err
    flat = " ".join(out.split())
    assert flat.startswith("llmsim plan: opt-1.3b on t4-gcp") and "Run opt-1.3b on t4-gcp with llmsim" in flat
    assert "per million generated tokens" in flat and f"capacity: {Headroom().text()}" in flat
    assert "report.md, configs.csv, 3 plots" in flat
    df = pd.read_csv(tmp_path / "r" / "configs.csv")
    assert len(df) > 0 and set(df["engine"]) <= {"llmsim", "flexgen", "accelerate", "zero-inference"}


def test_predict_prints_ttft_tpot_and_the_headroom():
    code, out, err = run_cli("predict")
    assert code == 0, err
    d = run_json("predict")
    first = d["prefill_latency_s"] / d["num_blocks"]
    per = d["decode_latency_s"] / d["num_blocks"] / (d["workload"]["gen_len"] - 1)
    flat = " ".join(out.split())
    assert f"time to first token {format_duration(first)} · time per output token {format_duration(per)}" in flat
    assert f"capacity: {NO_HEADROOM.text()}" in flat  # predict checks the policy against the usable memory
    assert {k: d["headroom"][k] for k in ("gpu_frac", "cpu_frac", "source")} == \
        {"gpu_frac": 0.0, "cpu_frac": 0.0, "source": NO_HEADROOM.source}
    assert d["headroom"]["margin_bytes"] == {"gpu": 0.0, "cpu": 0.0, "disk": 0.0}
    d = run_json("predict", "--headroom", "10")
    assert d["headroom"]["margin_bytes"] == {"gpu": pytest.approx(1.5 * GiB, rel=1e-12),
                                             "cpu": pytest.approx(20.4 * GiB, rel=1e-12), "disk": 0.0}
