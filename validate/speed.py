"""Executor speed as fractions of bounds measured in the same run (issue 5; the GPU check and
``benchmarks/bench_executor.py`` call ``run_bench``):

1. weight-streaming decode: all weights in pinned CPU memory, cache on the GPU, 32 x 4: weight
   bytes moved per decode step / step time, over the pinned H2D bandwidth measured now (1 GiB
   copy). Target >= 0.90 (FlexGen's runtime reaches 0.60 there).
2. all-on-GPU decode, 32 x 1: (weight + KV bytes read per step) / step time, over the HBM
   bandwidth measured now (device-to-device copy, bytes read + written). Target >= 0.80.

``torch`` is passed in, so a dry run can pass ``hardware_profiles.fakecuda`` for the bounds.
"""

from __future__ import annotations

import statistics

TARGETS = {"weight_streaming": 0.90, "all_gpu": 0.80}


def _h2d_pinned(torch, nbytes=2**30, reps=5) -> float:
    src = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    dst = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst.copy_(src, non_blocking=True)
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        dst.copy_(src, non_blocking=True)
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) / 1e3)
    return nbytes / statistics.median(times)


def _hbm(torch, nbytes=2**30, reps=10) -> float:
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    dst.copy_(src)
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        dst.copy_(src)
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) / 1e3)
    return 2 * nbytes / statistics.median(times)  # read + written


def run_bench(torch, model, workload, exec_device: str = "cuda", gpu_batch_size: int = 32,
              stream_batches: int = 4, bound_bytes: int = 2**30) -> dict:
    """Both measurements: the bounds with ``torch`` (copies of ``bound_bytes``), the
    executor runs of ``model`` under ``workload`` on ``exec_device``, each after a warm-up
    of the same layers (``validate.gpu_suite.warm_up``). Returns the JSON-ready figures."""
    from simulator.policy import Placement, Policy
    from validate.executor import run_policy
    from validate.gpu_suite import warm_up

    h2d, hbm = _h2d_pinned(torch, bound_bytes), _hbm(torch, bound_bytes)
    out = {"model": model.name, "gpu": torch.cuda.get_device_name(), "device": exec_device,
           "workload": workload.to_dict(), "h2d_pinned_bytes_per_s": h2d, "hbm_bytes_per_s": hbm}

    b = gpu_batch_size
    stream = Policy(gpu_batch_size=b, num_gpu_batches=stream_batches, weights=Placement(0, 1, 0))
    warm_up(model, workload, stream, exec_device)
    r = run_policy(model, workload, stream, device=exec_device)
    step = statistics.median(r.decode_step_s)
    wbytes = model.weight_bytes("fp16")  # every layer and the LM head cross the link once per step
    out["weight_streaming"] = {"policy": f"{b}x{stream_batches}, weights on the CPU", "weight_bytes_per_step": wbytes,
                               "step_s": step, "achieved_bytes_per_s": wbytes / step,
                               "fraction_of_h2d": wbytes / step / h2d, "target": TARGETS["weight_streaming"]}

    resident = Policy(gpu_batch_size=b, num_gpu_batches=1)
    warm_up(model, workload, resident, exec_device)
    r = run_policy(model, workload, resident, device=exec_device)
    step = statistics.median(r.decode_step_s)
    ctx = workload.prompt_len + workload.gen_len // 2
    read = model.weight_bytes("fp16") + b * ctx * model.kv_bytes_per_token("fp16") * model.num_layers
    out["all_gpu"] = {"policy": f"{b}x1, all on the GPU", "bytes_per_step": read, "step_s": step,
                      "achieved_bytes_per_s": read / step, "fraction_of_hbm": read / step / hbm,
                      "target": TARGETS["all_gpu"]}
    return out
