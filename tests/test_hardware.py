"""HardwareProfile: shipped profiles load, units convert once, bad files fail with the key named."""

import dataclasses

import numpy as np
import pytest

from conftest import synthetic_doc, synthetic_profile
from simulator.errors import ProfileError
from simulator.hardware import list_profiles, load_profile, profile_from_dict
from simulator.models import get_model
from simulator.units import GB, GiB


def test_shipped_profiles_load():
    names = list_profiles()
    assert {"t4-gcp", "a100-80g-sxm", "h100-pcie5"} <= set(names)
    for n in names:
        p = load_profile(n)
        assert p.name == n
        assert p.source in ("measured", "datasheet", "paper", "estimate")


def test_units_converted_to_si():
    p = load_profile("h100-pcie5")
    assert p.device.memory_bytes == pytest.approx(79.65 * GiB)
    assert p.device.mem_bytes_per_s == pytest.approx(2890 * GB)
    assert p.device.peak_flop_per_s("fp16") == pytest.approx(750e12)
    assert p.device.launch_s == pytest.approx(5e-6)
    assert p.links.h2d_bytes_per_s == pytest.approx(54.3e9)
    assert p.links.h2d_latency_s == pytest.approx(10e-6)
    assert p.links.duplex_bytes_per_s == pytest.approx(88.3e9)
    assert p.disk.read_direct_bytes_per_s == pytest.approx(1.7e9)
    assert p.cpu.peak_flop_per_s("bf16") == pytest.approx(440e9)


def test_t4_is_sourced_from_published_measurements_and_labels_each_key():
    """Issue 10: FlexGen's fitted rates and a published GEMM, datasheet values only where nothing
    measured exists - and every key's source named."""
    p = load_profile("t4-gcp")
    ks = p.metadata["key_sources"]
    assert p.source == "paper" and ks["links.h2d_pinned_GBps"] == "paper" and ks["gpu.fp16_TFLOPs"] == "measured"
    assert p.links.h2d_bytes_per_s == pytest.approx(12.89 * 2**30, rel=1e-3)  # FlexGen's ctog_bdw
    assert p.device.peak_flop_per_s("fp16") == pytest.approx(24e12)
    assert p.cpu.usable_bytes == pytest.approx(204 * GiB)  # FlexGen's cmem
    assert ks["gpu.fp32_TFLOPs"] == "datasheet" and ks["disk.read_direct_GBps"] == "datasheet"


def test_matmul_table_used_where_measured_and_roofline_elsewhere():
    p = load_profile("h100-pcie5")
    dev = p.device
    # Measured points are reproduced exactly (fp16 m x 7168 x 7168).
    t = dev.matmul_time_s(np.array([1, 32, 128, 512]), 7168, 7168, "fp16", 2)
    assert t * 1e6 == pytest.approx([60, 59, 62, 97])
    # The exact shape's own curve is used alone, clamped beyond its last m.
    r512 = 2 * 512 * 7168**2 / 97e-6
    assert dev.matmul_time_s(4096, 7168, 7168, "fp16", 2) == pytest.approx(2 * 4096 * 7168**2 / r512)
    # A nearby, unmeasured shape merges the curves in reach: between 512 (7168^2) and 8192
    # (8192^2) the rate is interpolated in log m.
    r8192 = 2 * 8192**3 / 1466e-6
    rate = r512 + (r8192 - r512) * np.log(4096 / 512) / np.log(8192 / 512)
    assert dev.matmul_time_s(4096, 7680, 7680, "fp16", 2) == pytest.approx(2 * 4096 * 7680**2 / rate)
    # A small shape far from any measured one: roofline + launch.
    k = n = 768
    m = 64
    roof = max(2 * m * k * n / 750e12, (m * k + k * n + m * n) * 2 / 2890e9) + 5e-6
    assert dev.matmul_time_s(m, k, n, "fp16", 2) == pytest.approx(roof)


def test_decode_attention_has_one_curve_per_storage_dtype():
    """A CPU-only profile's table may hold a curve per K/V storage dtype (the rows' dtype):
    each dtype reads its own; a dtype without one takes the unlabelled or only curve; the
    same size may appear once per dtype but not twice in one."""
    from simulator.ops import decode_attention_time_s
    rows = [{"kv_bytes": 1e6, "time_us": 100, "dtype": "fp32"}, {"kv_bytes": 4e6, "time_us": 400, "dtype": "fp32"},
            {"kv_bytes": 1e6, "time_us": 800, "dtype": "bf16"}, {"kv_bytes": 2e6, "time_us": 1600, "dtype": "bf16"}]
    p = synthetic_profile(gpu=None, links=None, cpu={"decode_attention_table": rows, "bf16_GFLOPs": 1000})
    dev = p.device
    assert dev.attention_read_time_s(2e6, 0.0, "fp32") == pytest.approx(200e-6)  # 10 GB/s
    assert dev.attention_read_time_s(2e6, 0.0, "bf16") == pytest.approx(1600e-6)  # its own 1.25 GB/s
    assert dev.attention_read_time_s(2e6, 0.0, "fp32", storage_dtype="bf16") == pytest.approx(1600e-6)
    assert dev.attention_read_time_s(2e6, 0.0, "fp16") == pytest.approx(200e-6)  # none: the first curve
    # ops.decode_attention_time_s keys the curve by the cache's storage dtype.
    m = get_model("opt-125m")
    kv = 8 * 100 * m.kv_bytes_per_token("bf16")
    t = decode_attention_time_s(m, dev, 8, 100, "bf16", ops=0, compute_dtype="fp32")
    assert float(t) == pytest.approx(float(dev.attention_read_time_s(kv, 0.0, "bf16")), rel=1e-9)
    unlabelled = synthetic_profile(gpu=None, links=None, cpu={"decode_attention_table": [
        {"kv_bytes": 1e6, "time_us": 100}, {"kv_bytes": 4e6, "time_us": 400}]})
    assert unlabelled.device.attention_read_time_s(2e6, 0.0, "bf16") == pytest.approx(200e-6)
    with pytest.raises(ProfileError, match="two points with kv_bytes 1e\\+06 in bf16"):
        synthetic_profile(gpu=None, links=None, cpu={"decode_attention_table": rows + [
            {"kv_bytes": 1e6, "time_us": 900, "dtype": "bf16"}]})


def test_prefill_attention_reads_its_dtypes_measured_curve_else_the_roofline():
    """A measured prefill-attention curve (achieved FLOP/s by FLOP) replaces the roofline
    of ``ops.prefill_attention_time_s``, per dtype; without one the roofline stays."""
    from simulator.ops import prefill_attention_time_s
    rows = [{"flop": 1e8, "time_us": 1000, "dtype": "fp32"}, {"flop": 1e9, "time_us": 5000, "dtype": "fp32"},
            {"flop": 1e8, "time_us": 500, "dtype": "bf16"}, {"flop": 1e9, "time_us": 2500, "dtype": "bf16"}]
    plain = synthetic_profile(gpu=None, links=None, cpu={"bf16_GFLOPs": 1000})
    p = synthetic_profile(gpu=None, links=None, cpu={"bf16_GFLOPs": 1000, "prefill_attention_table": rows})
    m = get_model("opt-125m")
    b, s = 4, 40
    flop = 2.0 * b * s * (s + 1) * m.q_dim
    for dtype, at_1e8, at_1e9 in (("fp32", 1e11, 2e11), ("bf16", 2e11, 4e11)):
        rate = np.interp(np.log(flop), np.log([1e8, 1e9]), [at_1e8, at_1e9])
        got = float(prefill_attention_time_s(m, p.device, b, s, dtype))
        assert got == pytest.approx(flop / rate + p.device.launch_s, rel=1e-9)
        nbytes = b * s * 4 * m.q_dim * (4 if dtype == "fp32" else 2)
        roof = max(flop / plain.device.peak_flop_per_s(dtype), nbytes / plain.device.mem_bytes_per_s)
        assert float(prefill_attention_time_s(m, plain.device, b, s, dtype)) == pytest.approx(
            roof + plain.device.launch_s, rel=1e-9)
    with pytest.raises(ProfileError, match="two points with flop 1e\\+08 in fp32"):
        synthetic_profile(gpu=None, links=None, cpu={"prefill_attention_table": rows + [
            {"flop": 1e8, "time_us": 900, "dtype": "fp32"}]})


def test_cpu_only_profile_uses_host_as_device():
    p = synthetic_profile(gpu=None, links=None)
    assert p.device_is_host
    assert p.device is p.cpu
    assert p.links.h2d_bytes_per_s == pytest.approx(5e9)  # memcpy
    assert p.gpu_count == 0


def test_with_capacity_overrides():
    p = synthetic_profile().with_capacity(gpu_bytes=8 * GiB, disk_bytes=10 * GiB)
    assert p.device.usable_bytes == 8 * GiB
    assert p.disk.capacity_bytes == 10 * GiB


@pytest.mark.parametrize("overrides,match", [
    ({"gpu": {"hbm_GBps": -1}}, r"gpu.hbm_GBps must be > 0, got -1"),
    ({"gpu": {"hbm_GBps": "fast"}}, r"gpu.hbm_GBps must be a number, got 'fast'"),
    ({"gpu": {"hbm_GBps": True}}, r"gpu.hbm_GBps must be a number"),
    ({"gpu": {"hbm_TBps": 3}}, r"unknown key gpu.hbm_TBps"),
    ({"cpu": {"cores": 2.5}}, r"cpu.cores must be a positive integer"),
    ({"metadata": {"source": "vibes"}}, r"metadata.source 'vibes' is not one of"),
    ({"metadata": {"key_sources": {"gpu.nope": "estimate"}}}, r"key_sources names unknown key 'gpu.nope'"),
    ({"gpu": {"matmul_table": [{"dtype": "fp16", "k": 8, "n": 8, "m": [1, 2], "time_us": [1]}]}},
     r"gpu.matmul_table\[0\].time_us has 1 value but m has 2"),
    ({"gpu": {"matmul_table": [{"dtype": "fp16", "k": 8, "n": 8, "m": [2, 1], "time_us": [1, 1]}]}},
     r"gpu.matmul_table\[0\].m must be strictly increasing, got \[2, 1\]"),
    ({"gpu": {"matmul_table": [{"dtype": "fp16", "k": 8, "n": 8, "m": [1], "time_us": [0]}]}},
     r"gpu.matmul_table\[0\].time_us\[0\] must be > 0, got 0"),
    ({"links": None}, r"missing key 'links'"),
    ({"gpu": None}, r"cpu.memcpy_GBps is required|links given without a gpu section"),
    ({"schema_version": 7}, r"schema_version 7 is not supported"),
    ({"extra": 1}, r"unknown key 'extra'"),
])
def test_strict_loader_names_the_key(overrides, match):
    with pytest.raises(ProfileError, match=match):
        profile_from_dict(synthetic_doc(**overrides), "bad.yaml")


def test_missing_key(write_yaml):
    doc = synthetic_doc()
    del doc["disk"]["read_direct_GBps"]
    path = write_yaml(doc)
    with pytest.raises(ProfileError, match=rf"{path}: missing key disk.read_direct_GBps"):
        load_profile(path)


def test_bad_yaml_and_missing_file(write_yaml, tmp_path):
    path = write_yaml("gpu: [1, 2\n")
    with pytest.raises(ProfileError, match="not valid YAML at line"):
        load_profile(path)
    with pytest.raises(ProfileError, match="no such file"):
        load_profile(tmp_path / "nope.yaml")
    with pytest.raises(ProfileError, match=r"unknown profile 'nope'"):
        load_profile("nope")
    with pytest.raises(ProfileError, match="expected a mapping"):
        load_profile(write_yaml("- 1\n- 2\n", "list.yaml"))


def test_missing_dtype_named():
    p = synthetic_profile()
    with pytest.raises(ProfileError, match=r"gpu.bf16_TFLOPs is needed"):
        p.device.peak_flop_per_s("bf16")


def test_profiles_are_hashable_values():
    a, b = synthetic_profile(), synthetic_profile()
    assert a == b and hash(a) == hash(b)
    c = dataclasses.replace(a, cpu_cores=99)
    assert c != a


def test_four_node_t4_profile_is_four_t4_gcp_machines():
    """t4-gcp-4node repeats t4-gcp's per-machine sections: they must not drift apart."""
    one, four = load_profile("t4-gcp"), load_profile("t4-gcp-4node")
    assert (four.device, four.cpu, four.disk, four.links) == (one.device, one.cpu, one.disk, one.links)
    assert four.interconnect.nodes == 4 and four.metadata["key_sources"].items() >= one.metadata["key_sources"].items()


def test_the_sources_of_the_figures_that_bound_an_answer():
    t4, h100 = load_profile("t4-gcp"), load_profile("h100-pcie5")
    assert t4.bound_sources("h2d") == {"links.h2d_pinned_GBps": "paper"}
    assert t4.bound_sources("gpu") == {"gpu.hbm_GBps": "paper", "gpu.fp16_TFLOPs": "measured"}
    assert h100.bound_sources("gpu")["gpu.matmul_table"] == "measured"
    assert h100.bound_sources("host") == {"gpu.kernel_launch_us": "estimate"}
    assert t4.source_text().startswith("paper; except ") and "1 measured" in t4.source_text()
    assert load_profile("cpu-2core").bound_sources("gpu") == {"cpu.memory_GBps": "measured", "cpu.fp16_GFLOPs": "measured",
                                                               "cpu.matmul_table": "measured"}


def test_a_gemm_no_table_covers_takes_the_profiles_fixed_time_beside_its_bytes():
    """gpu.gemm_fixed_us: the roofline's memory term is fixed + bytes / gemm_memory_GBps (the
    h100-sxm-8x figures: 4.4 us + bytes / 3.18 TB/s from published m = 1 GEMMs); the
    compute-bound term is untouched and launch_s still comes on top."""
    from dataclasses import replace
    dev = load_profile("h100-sxm-8x").device
    assert dev.gemm_fixed_s == pytest.approx(4.4e-6) and dev.gemm_read_bytes_per_s == pytest.approx(3.18e12)
    k, n = 5376, 12288
    nbytes = (k + k * n + n) * 2.0
    assert float(dev.matmul_time_s(1, k, n, "bf16", 2)) == pytest.approx(4.4e-6 + nbytes / 3.18e12 + dev.launch_s)
    no_fixed = replace(dev, gemm_fixed_s=0.0)
    assert float(dev.matmul_time_s(1, k, n, "bf16", 2) - no_fixed.matmul_time_s(1, k, n, "bf16", 2)) == pytest.approx(4.4e-6)
    m = 8192  # compute-bound: the peak, no fixed time added
    assert float(dev.matmul_time_s(m, k, n, "bf16", 2)) == pytest.approx(2.0 * m * k * n / dev.peak_flop_per_s("bf16")
                                                                           + dev.launch_s)
