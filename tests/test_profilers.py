"""Profilers (hardware_profiles/): statistics, the latency + bandwidth fit, table builders,
the schema round trip and the atomic write. CPU only, deterministic, no timing asserted."""

from __future__ import annotations

import os

import numpy as np
import pytest
import yaml

from hardware_profiles import interconnect, ops, pcie, profile, shapes
from hardware_profiles.timing import Reporter, Result, Summary, collect, fit_latency_bandwidth, summarize
from simulator.ops import layer_gemms
from simulator.errors import ProfileError
from simulator.hardware import load_profile
from simulator.models import PRESETS
from simulator.units import GB, GiB, KiB

SIZES = [64 * KiB * 2**i for i in range(15)]  # 64 KiB .. 1 GiB


def exact(seconds) -> Summary:
    return Summary(seconds, seconds, seconds, 1, (seconds,))


def noisy_summary(rng, t, n=25, sigma=0.03) -> Summary:
    return summarize(t * rng.lognormal(0.0, sigma, n))


# ------------------------------------------------------------------ statistics
def test_summarize_gives_median_and_percentiles():
    s = summarize([5.0, 1.0, 4.0, 2.0, 3.0])
    assert (s.median, s.n) == (3.0, 5)
    assert s.p10 == pytest.approx(1.4)
    assert s.p90 == pytest.approx(4.6)


@pytest.mark.parametrize("bad", [[1.0, 0.0, 2.0], [1.0, -1e-6], [float("nan")], []])
def test_summarize_refuses_zero_negative_or_missing_samples(bad):
    with pytest.raises(ProfileError, match="no samples|not a positive finite number"):
        summarize(bad, "h2d 64 KiB")


def test_collect_discards_warmup_and_stops_at_max():
    values = iter([100.0, 90.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    s = collect(lambda: next(values), warmup=2, min_repeats=3, max_repeats=4, budget_s=10.0)
    assert s.samples == (1.0, 2.0, 3.0, 4.0)
    assert s.median == 2.5


# ------------------------------------------------------------------ fit
def test_fit_recovers_latency_and_bandwidth_from_noisy_samples():
    rng = np.random.default_rng(2026)
    latency, bw = 9e-6, 25e9
    meds = [noisy_summary(rng, latency + x / bw).median for x in SIZES]
    fit = fit_latency_bandwidth(SIZES, meds)
    assert fit.bytes_per_s == pytest.approx(bw, rel=0.02)
    assert fit.latency_s == pytest.approx(latency, rel=0.05)
    assert fit.max_rel_residual < 0.05


def test_fit_is_exact_on_noiseless_points():
    fit = fit_latency_bandwidth(SIZES, [12e-6 + x / 54.3e9 for x in SIZES])
    assert fit.bytes_per_s == pytest.approx(54.3e9, rel=1e-9)
    assert fit.latency_s == pytest.approx(12e-6, rel=1e-7)
    assert fit.max_rel_residual < 1e-9


def test_fit_never_returns_a_negative_latency():
    # Times that shrink faster than linear at small sizes would give a negative intercept.
    times = [x / 10e9 * (0.8 if x < 1e6 else 1.0) for x in SIZES]
    fit = fit_latency_bandwidth(SIZES, times)
    assert fit.latency_s == 0.0
    assert 9e9 < fit.bytes_per_s < 11e9


@pytest.mark.parametrize("sizes,times,match", [
    ([1e6, 1e6], [1e-3, 1.1e-3], "two distinct sizes"),
    ([1e6, 2e6], [1e-3, 0.0], "positive"),
    ([1e6, 2e6, 4e6], [3e-3, 2e-3, 1e-3], "does not grow with size|two distinct"),
])
def test_fit_rejects_points_it_cannot_fit(sizes, times, match):
    with pytest.raises(ProfileError, match=match):
        fit_latency_bandwidth(sizes, times)


# ------------------------------------------------------------------ links section from synthetic points
LINK_TRUTH = {  # key: (latency s, bandwidth bytes/s of the bytes moved)
    "h2d_pinned": (10e-6, 54e9), "d2h_pinned": (12e-6, 55e9), "both_pinned": (15e-6, 88e9),
    "h2d_pageable": (30e-6, 7.3e9), "d2h_pageable": (25e-6, 13.8e9),
}


def synthetic_link_points(seed=1):
    rng = np.random.default_rng(seed)
    points = {}
    for key, (lat, bw) in LINK_TRUTH.items():
        moved = [pcie.payload_bytes(key.split("_")[0], s) for s in SIZES]
        points[key] = (SIZES, [noisy_summary(rng, lat + m / bw, sigma=0.01) for m in moved])
    return points


def test_links_section_is_the_fit_of_each_direction_and_kind():
    values, meas = pcie.build(synthetic_link_points(), {"generation": 5, "width": 16})
    assert values["h2d_pinned_GBps"] == pytest.approx(54, rel=0.01)
    assert values["d2h_pinned_GBps"] == pytest.approx(55, rel=0.01)
    assert values["duplex_pinned_GBps"] == pytest.approx(88, rel=0.01)  # both payloads counted
    assert values["h2d_pageable_GBps"] == pytest.approx(7.3, rel=0.01)
    assert values["d2h_pageable_GBps"] == pytest.approx(13.8, rel=0.01)
    assert values["h2d_latency_us"] == pytest.approx(10, rel=0.05)
    assert values["d2h_latency_us"] == pytest.approx(12, rel=0.05)
    assert (values["pcie_generation"], values["pcie_width"]) == (5, 16)
    # The measured 1 GiB point (not the fit) is kept for the 5% check.
    rate = pcie.point_rate_bytes_per_s(meas, "h2d_pinned", GiB)
    assert rate == pytest.approx(GiB / (10e-6 + GiB / 54e9), rel=0.02)
    assert meas["both_pinned"]["moved_bytes"][-1] == 2 * GiB


def test_links_section_leaves_out_what_was_not_measured():
    points = {k: v for k, v in synthetic_link_points().items() if "pageable" not in k}
    values, _ = pcie.build(points, {})
    assert "h2d_pageable_GBps" not in values and "pcie_generation" not in values


# ------------------------------------------------------------------ tables
def test_gemm_shapes_cover_every_preset_layer_once():
    got = shapes.model_gemm_shapes()
    assert len(got) == len(set(got))
    for model in PRESETS.values():
        for k, n, _ in layer_gemms(model):
            assert (k, n) in got
        assert (model.hidden_size, model.vocab_size) in got  # the LM head
    assert set(shapes.gpu_shapes(quick=True)) < set(got)
    assert all(k * n <= shapes.CPU_MAX_KN_FULL for k, n in shapes.cpu_shapes(quick=False))


def test_attention_grids_have_distinct_kv_sizes():
    for kind in shapes.ATTN_GRID:
        sizes = [shapes.kv_bytes(b, c, 2) for b, c in shapes.attention_grid(kind)]
        assert len(sizes) == len(set(sizes))
    assert shapes.kv_bytes(64, 1056, 2, heads=56, head_dim=128) == 1937768448  # REFERENCE.md's SDPA point


def test_matmul_rows_sort_m_and_convert_to_microseconds():
    pts = {("fp16", 4096, 4096): {128: exact(62e-6), 1: exact(60e-6), 32: Summary(59e-6, 58e-6, 61e-6, 9, ())},
           ("bf16", 768, 768): {}}
    rows = ops.matmul_rows(pts)
    assert rows == [{"dtype": "fp16", "k": 4096, "n": 4096, "m": [1, 32, 128], "time_us": [60.0, 59.0, 62.0],
                     "p10_us": [60.0, 58.0, 62.0], "p90_us": [60.0, 61.0, 62.0]}]


def test_attention_rows_are_keyed_by_kv_bytes_and_refuse_duplicates():
    rows = ops.attention_rows([(4, 128, exact(2e-4)), (1, 128, exact(1e-4))], "fp16", 2)
    assert [r["kv_bytes"] for r in rows] == [2 * 1 * 32 * 128 * 128 * 2, 2 * 4 * 32 * 128 * 128 * 2]
    assert [r["time_us"] for r in rows] == [100.0, 200.0]
    with pytest.raises(ValueError, match="share a K\\+V size"):
        ops.attention_rows([(4, 128, exact(1e-4)), (1, 512, exact(1e-4))], "fp16", 2)


def test_interconnect_bus_bandwidth_convention_and_fit():
    assert interconnect.bus_factor("all_reduce", 2) == 1.0
    assert interconnect.bus_factor("all_reduce", 8) == 1.75
    assert interconnect.bus_factor("send_recv", 8) == 1.0
    world, lat, busbw = 4, 20e-6, 300e9
    sizes = [2**20 * 4**i for i in range(6)]
    raw = {"all_reduce": {s: [lat + s * 1.5 / busbw] * 3 for s in sizes},
           "send_recv": {s: [lat + s / 100e9] * 3 for s in sizes}}
    summary = interconnect.summarize_ops(world, raw)
    big = summary["all_reduce"][-1]
    assert big["busbw_GBps"] == pytest.approx(big["algbw_GBps"] * 1.5, rel=1e-3)
    values, fit = interconnect.section_values(world, summary, "nvlink")
    assert values["intra_node_GBps"] == pytest.approx(300, rel=1e-3)
    assert values["intra_node_latency_us"] == pytest.approx(20, rel=1e-2)
    assert values["gpus_per_node"] == 4 and values["intra_node_link"] == "nvlink"


def test_cpu_thread_sweep_counts():
    from hardware_profiles.cpu import thread_counts
    assert thread_counts(1) == [1]
    assert thread_counts(6) == [1, 2, 4, 6]
    assert thread_counts(16) == [1, 2, 4, 8, 16]


# ------------------------------------------------------------------ the profile document
def synthetic_results(gpu=True) -> dict:
    cpu = {"name": "test cpu", "cores": 16, "memory_GiB": 125.0, "memory_GBps": 60.5, "memcpy_GBps": 30.25,
           "op_overhead_us": 2.5, "fp32_GFLOPs": 276.0, "bf16_GFLOPs": 440.0,
           "matmul_table": ops.matmul_rows({("fp32", 768, 768): {1: exact(80e-6), 64: exact(95e-6)}}),
           "decode_attention_table": ops.attention_rows([(1, 128, exact(1.8e-4)), (4, 128, exact(7e-4))], "fp32", 4)}
    disk = {"name": "/dev/vda (ext4)", "capacity_GiB": 60.0, "read_direct_GBps": 1.7, "write_direct_GBps": 1.5,
            "read_cached_GBps": 8.0, "write_cached_GBps": 6.0}
    out = {"cpu": Result(cpu, {"peak": {"fp32": {"shape": [2048] * 3}}}, {"cpu": "test cpu"}),
           "disk": Result(disk, {"page_cache": {"cached_over_direct_read": 4.7}})}
    if gpu:
        links, meas = pcie.build(synthetic_link_points(), {"generation": 5, "width": 16})
        g = {"name": "Test GPU", "count": 1, "memory_GiB": 79.65, "reserved_GiB": 0.52, "hbm_GBps": 2890.0,
             "fp16_TFLOPs": 750.0, "bf16_TFLOPs": 798.0, "kernel_launch_us": 5.5,
             "matmul_table": ops.matmul_rows({("fp16", 7168, 7168): {1: exact(60e-6), 512: exact(97e-6)}}),
             "decode_attention_table": ops.attention_rows([(64, 1152, exact(6.7e-4))], "fp16", 2)}
        out["gpu"] = Result(g, {"hbm": {"points": []}})
        out["links"] = Result(links, meas)
        out["interconnect"] = Result(None, {}, absent="fewer than two GPUs")
    else:
        out["gpu"] = Result(None, {}, absent="no CUDA device")
        out["links"] = Result(None, {}, absent="no CUDA device")
    return out


META = {"source": "measured", "date": "2026-11-25", "method": "synthetic", "machine": {"hostname": "t"},
        "versions": {"torch": "2.13.0"}}


def test_profile_round_trips_through_yaml_and_the_loader(tmp_path):
    doc = profile.assemble("roundtrip", synthetic_results(), META)
    out = tmp_path / "roundtrip.yaml"
    p = profile.write_profile(doc, out, force=False, header="test profile\nsecond line")
    again = load_profile(out)
    for hw in (p, again):
        assert hw.name == "roundtrip" and hw.source == "measured"
        assert hw.device.memory_bytes == pytest.approx(79.65 * GiB)
        assert hw.device.reserved_bytes == pytest.approx(0.52 * GiB)
        assert hw.device.mem_bytes_per_s == pytest.approx(2890e9)
        assert hw.device.peak_flop_per_s("fp16") == pytest.approx(750e12)
        assert hw.device.launch_s == pytest.approx(5.5e-6)
        assert hw.links.h2d_bytes_per_s == pytest.approx(doc["links"]["h2d_pinned_GBps"] * GB)
        assert hw.links.h2d_latency_s == pytest.approx(doc["links"]["h2d_latency_us"] * 1e-6)
        assert hw.links.duplex_bytes_per_s == pytest.approx(doc["links"]["duplex_pinned_GBps"] * GB)
        assert hw.cpu.mem_bytes_per_s == pytest.approx(60.5e9)
        assert hw.cpu.peak_flop_per_s("bf16") == pytest.approx(440e9)
        assert hw.disk.read_bytes_per_s("cached") == pytest.approx(8e9)
        assert hw.disk.read_bytes_per_s("direct") == pytest.approx(1.7e9)
    # Measured table points come back exactly (GEMM at a measured m; attention at a measured size).
    assert again.device.matmul_time_s(512, 7168, 7168, "fp16", 2) == pytest.approx(97e-6)
    kv = shapes.kv_bytes(64, 1152, 2)
    assert again.device.attention_read_time_s(kv, 1.0, "fp16") == pytest.approx(6.7e-4)
    text = out.read_text()
    assert text.startswith("# test profile\n# second line\n")
    stored = yaml.safe_load(text)
    assert stored["measurements"]["absent"] == {"interconnect": "fewer than two GPUs"}
    assert stored["measurements"]["links"]["h2d_pinned"]["size_bytes"] == SIZES
    assert "interconnect" not in stored


def test_cpu_only_profile_has_no_gpu_or_links_and_the_host_is_the_device(tmp_path):
    doc = profile.assemble("cpu-only", synthetic_results(gpu=False), META)
    assert "gpu" not in doc and "links" not in doc
    hw = profile.write_profile(doc, tmp_path / "cpu-only.yaml", force=False)
    assert hw.device_is_host and hw.gpu_count == 0
    assert hw.links.h2d_bytes_per_s == pytest.approx(30.25e9)  # the host's memcpy
    assert hw.device.matmul_time_s(64, 768, 768, "fp32", 4) == pytest.approx(95e-6)


def _leftovers(directory):
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp.yaml"))


@pytest.mark.parametrize("drop,match", [
    (("cpu", "memcpy_GBps"), "cpu.memcpy_GBps is required when there is no gpu section"),
    (("cpu", "fp32_GFLOPs"), "missing key cpu.fp32_GFLOPs"),
    (("disk", "read_direct_GBps"), "missing key disk.read_direct_GBps"),
])
def test_an_invalid_profile_is_never_written(tmp_path, drop, match):
    doc = profile.assemble("bad", synthetic_results(gpu=False), META)
    del doc[drop[0]][drop[1]]
    out = tmp_path / "bad.yaml"
    with pytest.raises(ProfileError, match=match) as e:
        profile.write_profile(doc, out, force=False)
    assert "nothing written" in str(e.value) and "\n" not in str(e.value)
    assert not out.exists() and _leftovers(tmp_path) == []


def test_a_zero_is_rejected_not_written(tmp_path):
    doc = profile.assemble("zero", synthetic_results(), META)
    doc["links"]["h2d_pinned_GBps"] = 0.0
    with pytest.raises(ProfileError, match=r"links.h2d_pinned_GBps must be > 0, got 0.0"):
        profile.write_profile(doc, tmp_path / "zero.yaml", force=True)


def test_failed_write_keeps_the_existing_file_and_leaves_no_temp(tmp_path):
    out = tmp_path / "keep.yaml"
    out.write_text("previous profile\n")
    doc = profile.assemble("keep", synthetic_results(), META)
    del doc["gpu"]["hbm_GBps"]
    with pytest.raises(ProfileError, match="missing key gpu.hbm_GBps"):
        profile.write_profile(doc, out, force=True)
    assert out.read_text() == "previous profile\n"
    assert _leftovers(tmp_path) == []


def test_ctrl_c_during_the_write_leaves_nothing(tmp_path, monkeypatch):
    def interrupted(path):
        raise KeyboardInterrupt

    monkeypatch.setattr(profile, "load_profile", interrupted)
    out = tmp_path / "ctrl-c.yaml"
    with pytest.raises(KeyboardInterrupt):
        profile.write_profile(profile.assemble("ctrl-c", synthetic_results(), META), out, force=False)
    assert not out.exists() and _leftovers(tmp_path) == []


def test_partial_or_broken_files_are_rejected_with_the_file_named(tmp_path):
    out = tmp_path / "whole.yaml"
    profile.write_profile(profile.assemble("whole", synthetic_results(), META), out, force=False)
    text = out.read_text()
    cut = tmp_path / "cut.yaml"
    cut.write_text(text[: text.index("\ncpu:")])  # everything after the gpu section lost
    with pytest.raises(ProfileError, match=rf"{cut}: missing key 'cpu'"):
        load_profile(cut)
    mangled = tmp_path / "mangled.yaml"
    mangled.write_text(text[: len(text) // 2] + "\n  - [unclosed\n")
    with pytest.raises(ProfileError, match=rf"{mangled}: not valid YAML at line \d+"):
        load_profile(mangled)
    doc = yaml.safe_load(text)
    doc["links"]["h2d_pinned_GBps"] = "fast"
    typo = tmp_path / "typo.yaml"
    typo.write_text(yaml.safe_dump(doc))
    with pytest.raises(ProfileError, match=r"links.h2d_pinned_GBps must be a number, got 'fast'"):
        load_profile(typo)


def test_plain_converts_numpy_and_str_subclasses_for_yaml():
    class Version(str):
        pass

    got = profile.plain({"a": np.float64(1.5), "b": (np.int64(2), Version("2.13.0")), 3: [np.float32(0.5)]})
    assert got == {"a": 1.5, "b": [2, "2.13.0"], 3: [0.5]}
    assert type(got["b"][1]) is str
    yaml.safe_dump(got)


def test_cpu_matmul_reference_check_is_accurate():
    torch = pytest.importorskip("torch")
    s, err = ops.matmul_square(torch, torch.device("cpu"), "fp32", 128,
                               {"warmup": 0, "min_repeats": 1, "max_repeats": 1, "budget_s": 0.0})
    assert err < 1e-5 and s.n == 1
    _, err16 = ops.matmul_square(torch, torch.device("cpu"), "bf16", 128,
                                 {"warmup": 0, "min_repeats": 1, "max_repeats": 1, "budget_s": 0.0})
    assert 1e-4 < err16 < 2e-2  # bf16 operands: rounding shows, but the product is right


def test_nothing_in_hardware_profiles_imports_torch_at_module_level():
    import ast
    import pathlib

    root = pathlib.Path(profile.__file__).parent
    for path in root.glob("*.py"):
        tree = ast.parse(path.read_text())
        top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        names = {a.name.split(".")[0] for n in top for a in getattr(n, "names", [])}
        mods = {n.module.split(".")[0] for n in top if isinstance(n, ast.ImportFrom) and n.module}
        assert "torch" not in names | mods, f"{path.name} imports torch at module level"


def test_nvidia_smi_row_is_the_gpu_profiled_matched_by_uuid(tmp_path, monkeypatch):
    import types

    from hardware_profiles import devices

    exe = tmp_path / "nvidia-smi"
    exe.write_text('#!/bin/sh\necho "GPU-aaaa-1, 5, 16"\necho "GPU-bbbb-2, [N/A], 8"\n')
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    fields = ["pcie.link.gen.current", "pcie.link.width.current"]
    fake_torch = types.SimpleNamespace(cuda=types.SimpleNamespace(
        get_device_properties=lambda d: types.SimpleNamespace(uuid="bbbb-2")))
    # CUDA's cuda:0 is nvidia-smi's second GPU here: the UUID decides, not the index.
    row = devices.nvidia_smi(fields, fake_torch, types.SimpleNamespace(index=0))
    assert row == {"pcie.link.gen.current": "[N/A]", "pcie.link.width.current": "8"}
    assert devices.parse_int(row["pcie.link.gen.current"]) is None and devices.parse_int("8") == 8
    wait = devices.nvidia_smi(fields, popen=True)
    assert wait.proc is not None and wait() == {"pcie.link.gen.current": "5", "pcie.link.width.current": "16"}


def test_focus_measures_the_models_shapes_densely():
    from simulator.models import get_model
    f = shapes.Focus.of([get_model("opt-125m"), get_model("llama-2-7b")])
    assert (4096, 11008) in f.gemm_shapes and (768, 3072) in f.gemm_shapes
    assert set(f.head_shapes) == {(768, 50272), (4096, 32000)}  # LM heads, at batch-sized m only
    assert f.m_values[:4] == (1, 2, 4, 8) and f.m_values[-1] == 2048 and max(f.head_m_values) <= 32
    assert f.dtypes == ("fp32",)
    assert (f.attn_heads, f.attn_head_dim) == (32, 128)  # the larger model's geometry
    sizes = [shapes.kv_bytes(b, c, 4, f.attn_heads, f.attn_head_dim) for b, c in f.attn_grid]
    assert len(sizes) == len(set(sizes))


def test_staged_table_measures_a_layer_that_fits_the_cache(monkeypatch):
    # A focus remembers one layer's weight bytes; the staged table rotates over exactly that
    # many bytes, and is skipped when a layer does not fit the device's last-level cache.
    torch = pytest.importorskip("torch")
    from simulator.models import ModelSpec
    m = ModelSpec(name="t", family="llama", hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1,
                  ffn_dim=128, vocab_size=256, max_position_embeddings=64, dtype="fp32")
    f = shapes.Focus.of([m], m_values=(4,), head_m_values=(4,), point_budget_s=0.002)
    assert f.staged_bytes == m.layer_weight_bytes("fp32") and f.rotate_bytes == m.weight_bytes("fp32")
    seen = []
    real = ops.matmul_table
    monkeypatch.setattr(ops, "matmul_table", lambda *a, **kw: seen.append(kw["rotate_bytes"]) or real(*a, **kw))
    cpu, plan = torch.device("cpu"), {"warmup": 1, "min_repeats": 1, "max_repeats": 2, "budget_s": 0.01}
    monkeypatch.setattr(ops, "cache_bytes", lambda torch, device: f.staged_bytes - 1)
    assert ops.staged_table(torch, cpu, f, plan, Reporter()) == ({}, {}) and seen == []
    monkeypatch.setattr(ops, "cache_bytes", lambda torch, device: f.staged_bytes)
    table, skipped = ops.staged_table(torch, cpu, f, plan, Reporter())
    assert seen == [f.staged_bytes]
    assert {key[1:] for key in table} == set(f.gemm_shapes) and skipped["deadline"] == []
    assert all(set(by_m) == {4} and by_m[4].median > 0 for by_m in table.values())


def test_gemm_memory_fit_is_a_line_of_time_against_bytes_over_the_half_precision_shapes_at_small_m():
    from hardware_profiles.ops import gemm_memory_fit
    from hardware_profiles.timing import Summary

    def t(sec):
        return Summary(sec, sec, sec, 1, (sec,))

    def nbytes(m, k, n):
        return (m * k + k * n + m * n) * 2.0
    rate, fixed = 3.18e12, 4.4e-6  # the published H100 figures (profile h100-sxm-8x)
    shapes = {("bf16", 5376, 12288): 1, ("bf16", 5376, 43008): 1, ("fp16", 4096, 6144): 2}
    points = {key: {m: t(fixed + nbytes(m, *key[1:]) / rate), 1024: t(1e-3)} for key, m in shapes.items()}
    points[("fp32", 16384, 16384)] = {1: t(400e-6)}   # not half precision
    points[("fp16", 16384, 8192)] = {256: t(200e-6)}  # no point at m <= 16
    got_rate, got_fixed = gemm_memory_fit(points)
    assert got_rate == pytest.approx(rate, rel=1e-9) and got_fixed == pytest.approx(fixed, rel=1e-6)
    # one shape (or shapes within 2x in bytes): the largest one's bytes over its time, no fixed time
    one = {("bf16", 8192, 8192): {2: t(60e-6), 1024: t(900e-6)}}
    assert gemm_memory_fit(one) == (pytest.approx(nbytes(2, 8192, 8192) / 60e-6, rel=1e-12), 0.0)
    # a line with a negative intercept is not a fixed time: the same fallback
    neg = {("fp16", 4096, 4096): {1: t(nbytes(1, 4096, 4096) / rate - 2e-6)},
           ("fp16", 8192, 8192): {1: t(nbytes(1, 8192, 8192) / rate - 2e-6)}}
    assert gemm_memory_fit(neg) == (pytest.approx(nbytes(1, 8192, 8192) / (nbytes(1, 8192, 8192) / rate - 2e-6)), 0.0)
    assert gemm_memory_fit({("fp32", 64, 64): {1: t(1e-6)}}) is None

