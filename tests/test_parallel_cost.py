"""Tensor, pipeline and data parallelism in the cost model: hand-computed cases and invariants."""

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import synthetic_profile
from simulator.cost import estimate
from simulator.errors import PolicyError
from simulator.hardware import load_profile
from simulator.models import get_model
from simulator.policy import Placement, Policy, Workload

OPT125 = get_model("opt-125m")
L, H = 12, 768


def two_gpus(**over):
    """Two GPUs in one node on a 100 GB/s link with 1 us per hop; compute ~free."""
    ic = {"intra_node_link": "nvlink", "intra_node_GBps": 100, "intra_node_latency_us": 1,
          "inter_node_GBps": 10, "inter_node_latency_us": 10}
    ic.update(over.pop("interconnect", {}))
    return synthetic_profile(gpu={"count": 2, "hbm_GBps": 1e9, "fp16_TFLOPs": 1e9, "kernel_launch_us": 1e-9},
                             interconnect=ic, **over)


def test_tensor_parallel_all_reduces_by_hand():
    # Prefill of 8 tokens, one sequence, all on the GPUs: per layer two ring all-reduces of
    # the hidden states S = 8 x 768 x 2 bytes among 2 ranks: each 2(2-1) x 1 us + 2(2-1)/2 x S
    # / 100 GB/s. The head: the vocab-parallel embedding's all-reduce of S, and the ranks
    # agree on the next token by gathering (max, index): 16 bytes.
    hw = two_gpus()
    est = estimate(OPT125, hw, Workload(8, 1), Policy(tp=2))
    S = 8 * H * 2
    per_layer = 2 * (2e-6 + S / 100e9)
    head = (2e-6 + S / 100e9) + (2e-6 + 16 / 100e9)
    assert est.prefill_latency_s == pytest.approx(L * per_layer + head, rel=1e-4)
    assert est.bottleneck == "collective"
    rows = {(r["phase"], r["component"]): r["time_s"] for r in est.breakdown}
    assert rows[("prefill", "communication")] == pytest.approx(L * per_layer + head, rel=1e-9)


def test_tensor_parallel_halves_weights_per_gpu():
    hw = two_gpus()
    one = estimate(OPT125, hw, Workload(8, 2), Policy())
    two = estimate(OPT125, hw, Workload(8, 2), Policy(tp=2))
    vec = sum(t.nbytes("fp16") for t in OPT125.layer_tensors() if not t.is_matrix)  # norms, biases: replicated
    mat = OPT125.layer_weight_bytes("fp16") - vec
    head_vec = sum(t.nbytes("fp16") for t in OPT125.head_tensors() if not t.is_matrix)
    head_mat = OPT125.head_weight_bytes("fp16") - head_vec
    saved = L * mat / 2 + head_mat / 2
    # the KV cache (heads split) and activation working sets also shrink; weights dominate here
    assert one.peak_memory_bytes["gpu"] - two.peak_memory_bytes["gpu"] >= saved
    assert one.peak_memory_bytes["gpu"] - two.peak_memory_bytes["gpu"] < saved * 1.05


def test_pipeline_parallel_by_hand():
    # Weights streamed from the CPU at 10 GB/s dominate; pp = 2 gives each GPU 6 layers. A
    # decode step of one micro-batch walks both stages in turn (max(nb, pp) / nb = 2 stage
    # times); with 4 micro-batches the pipeline stays full (a stage time per step).
    hw = two_gpus()
    C = Placement(0, 1, 0)
    wl = Workload(8, 3)
    half = OPT125.with_(num_layers=6)
    stage1 = estimate(half, hw, wl, Policy(weights=C))
    send = 1e-6 + 1 * H * 2 / 100e9  # one token's hidden state to the next stage
    pp1 = estimate(OPT125, hw, wl, Policy(weights=C, pp=2))
    assert pp1.decode_latency_s == pytest.approx(2 * (stage1.decode_latency_s), rel=1e-3)
    stage4 = estimate(half, hw, wl, Policy(weights=C, gpu_batch_size=1, num_gpu_batches=4))
    pp4 = estimate(OPT125, hw, wl, Policy(weights=C, gpu_batch_size=1, num_gpu_batches=4, pp=2))
    assert pp4.decode_latency_s == pytest.approx(stage4.decode_latency_s, rel=1e-3)
    # prefill fills and drains once: (nb + pp - 1) / nb stage passes
    assert pp4.prefill_latency_s == pytest.approx(stage4.prefill_latency_s * 5 / 4, rel=1e-3)
    assert send < 1e-5  # the sends hide under the link-bound stage
    rows = {(r["phase"], r["component"]) for r in pp4.breakdown}
    assert ("decode", "pipeline_send") in rows


def test_data_parallel_multiplies_throughput():
    hw = two_gpus()
    one = estimate(OPT125, hw, Workload(32, 4), Policy(gpu_batch_size=4))
    two = estimate(OPT125, hw, Workload(32, 4), Policy(gpu_batch_size=4, dp=2))
    assert two.num_sequences == 8
    assert two.total_latency_s == pytest.approx(one.total_latency_s, rel=1e-12)
    assert two.throughput_tok_s == pytest.approx(2 * one.throughput_tok_s, rel=1e-12)


def test_single_gpu_layout_ignores_topology():
    # tp = pp = dp = 1 on an 8-GPU node equals the same GPU described as a 1-GPU machine.
    dgx = load_profile("dgx-h100-8x")
    single = dataclasses.replace(dgx, gpu_count=1, interconnect=dataclasses.replace(dgx.interconnect, gpus_per_node=1))
    m, wl = get_model("llama-2-13b"), Workload(512, 32)
    pol = Policy(gpu_batch_size=16, num_gpu_batches=2, weights=Placement(0.5, 0.5, 0), cache=Placement(0.5, 0.5, 0))
    a, b = estimate(m, dgx, wl, pol), estimate(m, single, wl, pol)
    assert a.total_latency_s == b.total_latency_s and a.peak_memory_bytes == b.peak_memory_bytes


def test_shared_node_disk_is_split_between_ranks():
    hw = two_gpus()
    D = Placement(0, 0, 1)
    one = estimate(OPT125, hw, Workload(8, 3), Policy(weights=D))
    two = estimate(OPT125, hw, Workload(8, 3), Policy(weights=D, dp=2))
    # Both replicas read their weights from the node's one disk at once: twice the time.
    assert two.decode_latency_s == pytest.approx(2 * one.decode_latency_s, rel=1e-3)
    assert two.peak_memory_bytes["disk"] == pytest.approx(2 * one.peak_memory_bytes["disk"])


@pytest.mark.parametrize("pol,match", [
    (Policy(tp=5), "--tp 5 does not divide opt-125m's 12 attention heads"),
    (Policy(pp=13), "--pp 13 exceeds opt-125m's 12 layers"),
    (Policy(tp=2, dp=2), "= 4 GPUs, but synthetic has 2"),
])
def test_bad_layouts(pol, match):
    with pytest.raises(PolicyError, match=match):
        estimate(OPT125, two_gpus(), Workload(8, 2), pol)


def test_tp_needs_the_interconnect_figure():
    from simulator.errors import ProfileError
    hw = synthetic_profile(gpu={"count": 2})
    with pytest.raises(ProfileError, match="interconnect.intra_node_GBps is needed for --tp 2"):
        estimate(OPT125, hw, Workload(8, 2), Policy(tp=2))


@settings(max_examples=60, deadline=None)
@given(st.sampled_from([(2, 1), (1, 2), (2, 2), (4, 1), (1, 4)]), st.floats(1.0, 20.0), st.integers(1, 8),
       st.booleans())
def test_more_interconnect_bandwidth_never_slower(layout, k, nb, offload):
    tp, pp = layout
    m = get_model("llama-2-13b")
    hw = load_profile("dgx-h100-8x")
    fast = dataclasses.replace(hw, interconnect=dataclasses.replace(
        hw.interconnect, intra_node_bytes_per_s=hw.interconnect.intra_node_bytes_per_s * k))
    pol = Policy(gpu_batch_size=8, num_gpu_batches=nb, tp=tp, pp=pp,
                 weights=Placement(0.5, 0.5, 0) if offload else Placement())
    wl = Workload(256, 8)
    assert estimate(m, fast, wl, pol).total_latency_s <= estimate(m, hw, wl, pol).total_latency_s * (1 + 1e-12)


def test_pipeline_bubble_shrinks_with_micro_batches():
    # Prefill time per sequence relative to the ideal (stage time / pp) falls as nb grows.
    m, hw, wl = get_model("llama-2-13b"), load_profile("dgx-h100-8x"), Workload(512, 1)
    ratios = []
    for nb in (1, 2, 4, 8, 16):
        pp4 = estimate(m, hw, wl, Policy(gpu_batch_size=4, num_gpu_batches=nb, pp=4))
        pp1 = estimate(m, hw, wl, Policy(gpu_batch_size=4, num_gpu_batches=nb))
        ratios.append(pp4.prefill_latency_s / pp1.prefill_latency_s)
    assert all(a > b for a, b in zip(ratios, ratios[1:]))
    assert ratios[-1] < 0.35 < 0.9 < ratios[0]  # pp=4 with 16 micro-batches: (16+3)/16 / 4 = 0.30 ideal


def test_search_over_gpus_picks_tp_for_latency_and_replicas_for_throughput():
    from simulator.search import SearchSpace, search
    m, hw, wl = get_model("llama-2-70b"), load_profile("dgx-h100-8x"), Workload(512, 32)
    space = SearchSpace(gpu_batch_sizes=(1, 16, 64), num_gpu_batches=(1, 4), dtype="fp16")
    lat = search(m, hw, wl, objective="latency", space=space, compare=False, gpus=8)
    assert lat.policy.tp >= 2 and lat.feasible
    thr = search(m, hw, wl, space=space, compare=False, gpus=8)
    assert thr.policy.dp >= 2 and thr.feasible
    lays = thr.layouts()
    assert len(lays) >= 8  # every layout of 8 GPUs has its best
    assert thr.estimate.throughput_tok_s >= lays["throughput_tok_s"].max() * (1 - 0.02)
