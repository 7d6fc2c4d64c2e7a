"""Partition layouts (simulator/layouts.py; Pope et al., arXiv 2211.05102, section 3 and
Appendix A): the communication of each layout per layer written out by hand, the collectives'
alpha-beta costs on a switch and on a torus, the multi-query batch-sharded cache, how the
best layout moves with the batch, and the TPU v4 profile."""

import math

import numpy as np
import pytest

from simulator import layouts as L
from simulator.cost import estimate
from simulator.errors import PolicyError, ProfileError
from simulator.hardware import load_profile, profile_from_dict
from simulator.models import get_model
from simulator.parallel import allreduce_time_s, rank_view
from simulator.policy import Policy, Workload
from simulator.vocabulary import Collective

PALM = get_model("palm-540b-64h")
TPU = load_profile("tpu-v4-64")
W_LINK = 45e9  # one ICI link, one way (tpu-v4-64.yaml)


def gelu_model(E=4096, layers=4, heads=64):
    """An OPT-shaped model (plain MLP, F = 4E, serial attention then MLP) for the paper's formulas."""
    return get_model("opt-6.7b").with_(name="ffn-4e", hidden_size=E, num_layers=layers, num_heads=heads,
                                       num_kv_heads=heads, ffn_dim=4 * E)


def plan(model, layout, mesh=(4, 4, 4), e_axes=("x",), attention="heads", hw=TPU):
    return L.PhasePlan(model, L.PartitionLayout(layout), L.AttentionSharding(attention), L.Mesh(mesh),
                       L.Topology.of(hw), e_axes if layout == "2d-ws" else ())


def by_what(ops, what):
    return [op for op in ops if op.what.startswith(what)]


# ------------------------------------------------------------------ volumes by hand
def test_1d_weight_stationary_is_two_all_reduces_of_BLE_per_layer():
    m, B, Ln, e = gelu_model(), 8, 128, 2
    ops = plan(m, "1d-ws").collectives(np.array([B]), Ln, e)
    assert [op.kind for op in ops] == [Collective.ALL_REDUCE, Collective.ALL_REDUCE]
    for op in ops:
        assert op.axes == ("x", "y", "z") and float(op.nbytes[0]) == B * Ln * m.hidden_size * e
    # a parallel attention+MLP block (PaLM) reduces once per layer
    ops = plan(PALM, "1d-ws").collectives(np.array([B]), Ln, e)
    assert len(ops) == 1 and float(ops[0].nbytes[0]) == B * Ln * PALM.hidden_size * e


@pytest.mark.parametrize("mesh", [(2, 2, 4), (4, 4, 4), (8, 4, 8)])
def test_2d_weight_stationary_mlp_moves_8BLE_over_sqrt_n(mesh):
    """Appendix A.2.1: per MLP, all-gather BLE/X and reduce-scatter BLE/X over yz, reduce-scatter
    and all-gather BLF/YZ over x: 2BLE/X + 2BLF/YZ per chip, 8 BLE / sqrt(n) at X = sqrt(n)/2
    when F = 4E (each mesh here has X = sqrt(n)/2 on its x axis)."""
    m, B, Ln, e = gelu_model(), 4, 256, 2
    n = math.prod(mesh)
    X, YZ = mesh[0], n // mesh[0]
    assert X == math.isqrt(n) // 2
    ops = by_what(plan(m, "2d-ws", mesh).collectives(np.array([B]), Ln, e), "mlp")
    BLE, BLF = B * Ln * m.hidden_size * e, B * Ln * m.ffn_dim * e
    expect = [(Collective.ALL_GATHER, ("y", "z"), BLE / X), (Collective.REDUCE_SCATTER, ("x",), BLF / YZ),
              (Collective.ALL_GATHER, ("x",), BLF / YZ), (Collective.REDUCE_SCATTER, ("y", "z"), BLE / X)]
    assert [(op.kind, op.axes, float(op.nbytes[0])) for op in ops] == expect
    assert sum(float(op.nbytes[0]) for op in ops) == pytest.approx(8 * BLE / math.sqrt(n), rel=1e-12)


def test_2d_communication_shrinks_with_sqrt_chips_while_1d_does_not():
    m, B, Ln = gelu_model(), 4, 256
    vol = {}
    for mesh in ((2, 2, 4), (4, 4, 4), (8, 4, 8)):
        for lay in ("1d-ws", "2d-ws"):
            ops = plan(m, lay, mesh).collectives(np.array([B]), Ln, 2)
            vol[lay, math.prod(mesh)] = sum(float(op.nbytes[0]) for op in ops)
    assert vol["1d-ws", 16] == vol["1d-ws", 64] == vol["1d-ws", 256]
    assert vol["2d-ws", 16] / vol["2d-ws", 64] == pytest.approx(2.0) == vol["2d-ws", 64] / vol["2d-ws", 256]


@pytest.mark.parametrize("layout,N", [("wg-x", 4), ("wg-xy", 16), ("wg-xyz", 64)])
def test_weight_gathered_moves_the_weights_and_only_the_rest_of_the_activations(layout, N):
    """Section 3.2.3 / Appendix A.2.2: the layer's weights all-gathered over N chips (each
    receives W N / n), the batch split N ways and 1D over the n / N chips left: all-reduces of
    (B/N) L E there, none when N = n."""
    m, B, Ln, e = gelu_model(), 64, 128, 2
    W = m.layer_weight_bytes("fp16")
    ops = plan(m, layout).collectives(np.array([B]), Ln, e, layer_bytes=W / 64)
    gather = by_what(ops, "layer weights")
    assert len(gather) == 1 and gather[0].kind is Collective.ALL_GATHER
    assert float(gather[0].nbytes[0]) == pytest.approx(W * N / 64, rel=1e-12)
    rest = [op for op in ops if op not in gather]
    assert [op.kind for op in rest] == [Collective.ALL_REDUCE] * 2
    for op in rest:
        assert float(op.nbytes[0]) == B // N * Ln * m.hidden_size * e
    t = plan(m, layout).time_s(rest)
    assert (float(np.max(t)) == 0.0) == (N == 64)


def test_weight_gathered_minimum_is_4E_sqrt_BLF_over_n():
    """Appendix A.2.2: T(N) = 2EF N / n + 2BLE / N elements per chip is least at N = sqrt(BLn/F),
    where it equals 4E sqrt(BLF/n); the code's per-chip volumes at the three gather sizes of
    a 64-chip torus follow T(N) (an all-reduce moves its bytes twice: reduce-scatter, all-gather)."""
    m, n, e = gelu_model(E=2048), 64, 1
    E, F = m.hidden_size, m.ffn_dim
    BL = F * 4  # N* = sqrt(BL n / F) = 16
    T = lambda N: 2 * E * F * N / n + 2 * BL * E / N  # noqa: E731
    assert min((4, 16, 64), key=T) == 16 and T(16) == pytest.approx(4 * E * math.sqrt(BL * F / n), rel=1e-12)
    for layout, N in (("wg-x", 4), ("wg-xy", 16)):
        ops = plan(m, layout).collectives(np.array([BL]), 1, e, layer_bytes=2 * E * F / n)  # one MLP's weights
        got = sum(float(op.nbytes[0]) * (2 if op.kind is Collective.ALL_REDUCE else 1)
                  for op in ops if op.what in ("layer weights", "mlp output"))
        assert got == pytest.approx(T(N), rel=1e-12)


# ------------------------------------------------------------------ collectives
def test_collectives_on_a_torus_axis_and_over_all_axes():
    topo, mesh = L.Topology.of(TPU), L.Mesh((4, 4, 4))
    x = topo.group(mesh, ("x",))
    assert (x.size, x.bytes_per_s, x.steps) == (4, 2 * W_LINK, 3)  # a wrapped ring: both directions
    xyz = topo.group(mesh, L.AXES)
    assert (xyz.size, xyz.bytes_per_s, xyz.steps) == (64, 6 * W_LINK, 9)  # 270 GB/s: the paper's figure
    D = 1e9
    assert float(L.collective_time_s(Collective.ALL_GATHER, D, x)) == pytest.approx(3e-6 + 0.75 * D / 90e9)
    assert float(L.collective_time_s(Collective.ALL_REDUCE, D, xyz)) == pytest.approx(
        2 * 9e-6 + 2 * 63 / 64 * D / 270e9)
    assert float(L.collective_time_s(Collective.ALL_TO_ALL, D, x)) == pytest.approx(3e-6 + D * 4 / (8 * W_LINK))
    # a sub-slice's axis of 2 does not wrap: one link each way
    small = topo.group(L.Mesh((2, 2, 2)), ("x",))
    assert small.bytes_per_s == W_LINK


def test_1d_on_a_switch_is_parallel_allreduce():
    hw = load_profile("dgx-a100-8x")
    m = get_model("llama-2-13b")
    p = L.PhasePlan(m, L.PartitionLayout.WS_1D, L.AttentionSharding.HEADS, L.Topology.of(hw).mesh(8),
                    L.Topology.of(hw))
    b = np.array([1.0, 16.0])
    ic = hw.interconnect
    want = 2 * allreduce_time_s(b * 512 * m.hidden_size * 2, 8, ic.intra_node_bytes_per_s, ic.intra_node_latency_s)
    np.testing.assert_allclose(p.comm_time_s(b, 512, 2), want, rtol=1e-12)


def test_switch_groups_use_the_network_when_they_span_nodes():
    hw = load_profile("dgx-a100-8x").__class__  # noqa: F841  (the dataclass; profiles built below)
    doc = _switch_doc(nodes=2)
    topo = L.Topology.of(profile_from_dict(doc))
    mesh = topo.mesh(16)
    assert str(mesh) == "2x2x4"
    assert topo.group(mesh, ("z",)).bytes_per_s == 300e9  # 4 consecutive GPUs: one node
    assert topo.group(mesh, ("y", "z")).bytes_per_s == 300e9  # 8: still one node
    assert topo.group(mesh, ("x",)).bytes_per_s == 25e9  # stride 8: across nodes


# ------------------------------------------------------------------ attention
def test_multi_query_cache_sharded_over_the_batch_is_one_nth_per_chip():
    b = np.array([256.0])
    heads, batch = plan(PALM, "1d-ws"), plan(PALM, "1d-ws", attention="batch")
    assert float(heads.cache_share(b)[0]) == 1.0  # one K/V head: replicated on all 64 chips
    assert float(batch.cache_share(b)[0]) == pytest.approx(1 / 64)
    assert float(plan(PALM, "2d-ws").cache_share(b)[0]) == pytest.approx(1 / 4)  # 2D scatters the batch over x
    # fewer sequences than chips: as many batch shards as divide the chips and fit the batch
    assert float(batch.cache_share(np.array([16.0]))[0]) == pytest.approx(1 / 16)
    # the estimate's decode memory differs by exactly the cache saved
    wl = Workload(1024, 64)
    est = {att: estimate(PALM, TPU, wl, Policy(gpu_batch_size=256, tp=64, dtype="bf16", attention_layout=att))
           for att in ("heads", "batch")}
    cache = 256 * (1024 + 64 - 1) * PALM.kv_bytes_per_token("bf16") * PALM.num_layers
    saved = est["heads"].peak_memory_by_phase["decode"]["gpu"] - est["batch"].peak_memory_by_phase["decode"]["gpu"]
    assert saved == pytest.approx(cache * (1 - 1 / 64), rel=1e-9)


def test_batch_sharded_attention_adds_the_query_and_output_all_to_all():
    B, e = 256, 2
    ops = plan(PALM, "1d-ws", attention="batch").collectives(np.array([B]), 1, e)
    a2a = [op for op in ops if op.kind is Collective.ALL_TO_ALL]
    assert len(a2a) == 2  # multi-query: K and V are computed whole on every chip, only q and o move
    for op in a2a:
        assert float(op.nbytes[0]) == B * PALM.q_dim / 64 * e
    assert not [op for op in plan(PALM, "1d-ws").collectives(np.array([B]), 1, e) if op.kind is Collective.ALL_TO_ALL]


def test_prefill_reshards_the_prompt_cache_when_the_decode_shards_it_otherwise():
    b, s, e = np.array([64.0]), 2048, 2
    part = L.partition(PALM, TPU, 64, ("wg-xyz", "1d-ws", "heads"))
    ops = part.phase("prefill").collectives(b, s, e, 1.0, prefill_of=part.phase("decode"))
    moved = by_what(ops, "prompt K/V")
    assert len(moved) == 1 and float(moved[0].nbytes[0]) == 1 * s * 2 * PALM.kv_dim * e  # 64 / 64 sequences
    same = L.partition(PALM, TPU, 64, ("wg-xyz", "2d-ws", "batch"))
    assert not by_what(same.phase("prefill").collectives(b, s, e, 1.0, prefill_of=same.phase("decode")), "prompt")


# ------------------------------------------------------------------ the choice moves with the batch
def test_prefill_communication_favours_weight_gathering_as_the_batch_grows():
    """Section 3.2.3 / Fig. 3: weight-stationary at few tokens, then gathering over more and
    more axes (X, XY, XYZ) as B L grows, on 64 TPU v4 chips with PaLM 540B."""
    layer = PALM.layer_weight_bytes("bf16") / 64
    order = ("1d-ws", "2d-ws", "wg-x", "wg-xy", "wg-xyz")
    gathered = {"1d-ws": 1, "2d-ws": 1, "wg-x": 4, "wg-xy": 16, "wg-xyz": 64}
    best = []
    for B in (1, 4, 16, 64, 256, 1024):
        t = {lay: float(L.partition(PALM, TPU, 64, (lay, lay, "heads")).phase("prefill").comm_time_s(
            np.array([float(B)]), 2048, 2, layer)[0]) for lay in order}
        best.append(min(t, key=t.get))
    assert best[0] in ("1d-ws", "2d-ws") and best[-1] == "wg-xyz"
    assert "wg-x" in best or "wg-xy" in best
    assert all(gathered[a] <= gathered[b] for a, b in zip(best, best[1:]))


def test_estimated_prefill_layout_at_batch_1_and_512_and_decode_layout():
    wl = Workload(2048, 64)
    pre = {}
    for B in (1, 512):
        pre[B] = {lay: estimate(PALM, TPU, wl, Policy(gpu_batch_size=B, tp=64, dtype="bf16", prefill_layout=lay,
                                                      decode_layout="2d-ws", attention_layout="batch")).prefill_latency_s
                  for lay in ("1d-ws", "2d-ws", "wg-x", "wg-xy", "wg-xyz")}
    assert min(pre[1], key=pre[1].get) in ("1d-ws", "2d-ws")
    assert min(pre[512], key=pre[512].get) in ("wg-xy", "wg-xyz")
    assert pre[512]["wg-xyz"] < 0.8 * pre[512]["1d-ws"]


def test_search_chooses_a_layout_per_phase_on_the_torus():
    from simulator.report import policy_text
    from simulator.search import SearchSpace, search
    space = SearchSpace(gpu_batch_sizes=(1, 64, 256), num_gpu_batches=(1,), compress_weights=(False,),
                        compress_cache=(False,), cpu_attention=(False,), dtype="bf16")
    p = search(PALM, TPU, Workload(2048, 64), space=space, gpus=64, compare=False)
    assert p.feasible
    s = p.partition_summary()
    assert s["prefill"].startswith("wg-") and s["decode"] in ("1d-ws", "2d-ws")
    # 256 sequences fit only with the multi-query cache sharded over the batch (section 3.3)
    assert s["attention"] == "batch" and p.policy.gpu_batch_size == 256
    assert s["prefill"] != s["decode"] and p.policy.tp == 64
    assert f"prefill {s['prefill']}" in policy_text(p.policy.to_dict())
    assert p.to_dict()["partition"]["prefill"] == s["prefill"]
    from simulator.report import plan_markdown
    md = plan_markdown(p, TPU, {})
    assert f"prefill {s['prefill']}, decode {s['decode']}, attention over batch on a 4x4x4 mesh" in md
    assert "| wg-xyz | batch |" in md  # the layouts evaluated at the chosen batch


# ------------------------------------------------------------------ refusals
def test_layouts_are_refused_where_they_are_not_modelled():
    wl = Workload(128, 8)
    with pytest.raises(PolicyError, match="--engine flexgen: runs Megatron's 1D"):
        estimate(PALM, TPU, wl, Policy(tp=64, dtype="bf16", decode_layout="2d-ws"), "flexgen")
    with pytest.raises(PolicyError, match="GPU-resident runs only"):
        estimate(PALM, TPU, wl, Policy(tp=64, dtype="bf16", decode_layout="2d-ws", compress_weights=True))
    with pytest.raises(PolicyError, match="2d-ws needs two mesh axes"):
        estimate(get_model("llama-2-13b"), load_profile("dgx-a100-8x"), wl,
                 Policy(tp=2, decode_layout="2d-ws"))
    with pytest.raises(PolicyError, match="--decode-layout: '3d-ws' is not one of"):
        Policy(decode_layout="3d-ws")
    with pytest.raises(PolicyError, match="--tp 5: 5 chips are not a sub-slice of tpu-v4-64's 4x4x4 torus"):
        L.Topology.of(TPU).mesh(5)


# ------------------------------------------------------------------ the TPU v4 profile
def test_tpu_v4_profile_loads_with_its_sources():
    hw = TPU
    assert hw.source == "paper" and hw.device.peak_flop_per_s("bf16") == 275e12
    assert hw.device.memory_bytes == 32 * 2**30 and hw.device.mem_bytes_per_s == 1200e9
    ic = hw.interconnect
    assert (ic.topology, ic.torus_shape, ic.ici_link_bytes_per_s, ic.ici_links_per_chip) == ("torus", (4, 4, 4), 45e9, 6)
    assert hw.total_gpus == 64 and ic.torus_wraparound
    assert hw.key_source("interconnect.ici_link_GBps") == "datasheet" and hw.key_source("gpu.hbm_GBps") == "paper"
    rv = rank_view(PALM, hw, 64, 1, 1)  # 1D over the whole slice: all six links
    assert rv.collective_bytes_per_s == 270e9 and str(rv.partition.mesh) == "4x4x4"


def _tpu_doc(**changes) -> dict:
    import yaml
    doc = yaml.safe_load(open(TPU.path).read())
    doc["interconnect"].update(changes)
    return doc


def _switch_doc(nodes=1) -> dict:
    import yaml
    doc = yaml.safe_load(open(load_profile("dgx-a100-8x").path).read())
    doc["interconnect"]["nodes"] = nodes
    return doc


@pytest.mark.parametrize("changes,msg", [
    ({"torus_shape": "4x4"}, "torus_shape '4x4' is not three positive sizes"),
    ({"torus_shape": "4x4x2"}, "holds 32 chips but gpu.count x interconnect.nodes is 64"),
    ({"ici_links_per_chip": 4}, "ici_links_per_chip 4 does not match a 3D torus"),
    ({"topology": "ring"}, "interconnect.topology 'ring' is not one of switch, torus"),
    ({"intra_node_GBps": 300}, "interconnect.intra_node_GBps is not used with topology torus"),
    ({"torus_wraparound": "yes"}, "interconnect.torus_wraparound must be true or false"),
])
def test_bad_torus_keys_are_one_line_errors(changes, msg):
    with pytest.raises(ProfileError, match=msg) as e:
        profile_from_dict(_tpu_doc(**changes), "tpu.yaml")
    assert "\n" not in str(e.value) and str(e.value).startswith("tpu.yaml: ")


def test_torus_keys_need_topology_torus():
    doc = _switch_doc()
    doc["interconnect"]["ici_link_GBps"] = 45
    with pytest.raises(ProfileError, match="interconnect.ici_link_GBps needs interconnect.topology: torus"):
        profile_from_dict(doc, "gpu.yaml")
    doc = _tpu_doc()
    del doc["interconnect"]["ici_link_GBps"]
    with pytest.raises(ProfileError, match="missing key interconnect.ici_link_GBps"):
        profile_from_dict(doc, "tpu.yaml")


# ------------------------------------------------------------------ the command line
def test_predict_takes_the_layouts_and_refuses_bad_ones_in_one_line():
    from helpers import run_cli, run_json
    args = ("predict", "--model", "palm-540b-64h", "--hardware", "tpu-v4-64", "--tp", "64", "--dtype", "bf16",
            "--weights", "100,0,0", "--cache", "100,0,0", "--activations", "100,0,0", "--gpu-attention",
            "--gpu-batch-size", "64", "--num-gpu-batches", "1", "--prompt-len", "2048", "--gen-len", "64")
    d = run_json(*args, "--prefill-layout", "wg-xy", "--decode-layout", "2d-ws", "--attention-layout", "batch")
    assert (d["policy"]["prefill_layout"], d["policy"]["decode_layout"], d["policy"]["attention_layout"]) == \
        ("wg-xy", "2d-ws", "batch")
    megatron = run_json(*args)
    assert "prefill_layout" not in megatron["policy"]  # Megatron's split is implied
    assert d["prefill_latency_s"] < megatron["prefill_latency_s"]
    code, out, err = run_cli(*args, "--decode-layout", "3d")
    assert code == 2 and err.count("\n") == 1 and "--decode-layout: '3d' is not one of 1d-ws, 2d-ws" in err
