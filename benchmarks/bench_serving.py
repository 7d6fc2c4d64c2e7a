"""Speed of the serving simulation and of the capacity search.

Targets (issue 11, on the 2-core CI machine): ``llmsim simulate`` of 10,000 requests at 80%
of capacity in <= 3 s; ``llmsim capacity`` for one model and one profile in <= 30 s. The
case: Llama-3-8B on one GPU of ``dgx-h100-8x``, prompt 512 and output 128 tokens (fixed),
Poisson arrivals, the ``continuous`` engine, SLOs p99 TTFT 1 s and p99 TPOT 50 ms. The
capacity found for tp = 1 sets the rate (80% of it) of the 10,000-request run. Each figure
is printed with its ratio to the target, and the simulation also against a reference
measured in the same run: the same simulation with every iteration evaluated on its own
(no steady decode runs).

    python benchmarks/bench_serving.py [--json]
"""

from __future__ import annotations

import argparse
import json
import time

from simulator.hardware import load_profile
from simulator.models import get_model
from simulator.serving import metrics
from simulator.serving.capacity import capacity, max_rate
from simulator.serving.engines import get_engine
from simulator.serving.metrics import SLO
from simulator.serving.requests import StreamSpec
from simulator.serving.simulate import simulate

SIMULATE_TARGET_S = 3.0
CAPACITY_TARGET_S = 30.0


def main() -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--requests", type=int, default=10_000)
    args = ap.parse_args()

    model, hw, eng = get_model("llama-3-8b"), load_profile("dgx-h100-8x"), get_engine("continuous")
    slo = SLO(ttft_s=1.0, tpot_s=0.05)
    spec = StreamSpec(num_requests=400, prompt_len=512, output_len=128, seed=0)

    t = time.perf_counter()
    cap = capacity(model, hw, spec, eng, slo)
    capacity_s = time.perf_counter() - t
    one = max_rate(model, hw, spec, eng, slo, tp=1, pp=1)

    rate = 0.8 * one.max_rate_rps
    stream = StreamSpec(num_requests=args.requests, prompt_len=512, output_len=128, seed=0).at_rate(rate)
    simulate(model, hw, stream.head(100), eng)  # warm the imports and caches
    t = time.perf_counter()
    res = simulate(model, hw, stream, eng)
    sim_s = time.perf_counter() - t
    t = time.perf_counter()
    ref = simulate(model, hw, stream, eng, steady_runs=False)
    ref_s = time.perf_counter() - t
    s = metrics.summary(res, slo)
    out = {
        "case": "llama-3-8b on dgx-h100-8x (tp=1), prompt 512, output 128, Poisson, engine continuous",
        "capacity_rps_tp1": one.max_rate_rps, "rate_rps": rate, "requests": args.requests,
        "simulate_s": sim_s, "simulate_target_s": SIMULATE_TARGET_S, "simulate_vs_target": sim_s / SIMULATE_TARGET_S,
        "simulated_iterations": res.simulated_iterations, "scheduled_batches": res.scheduled_batches,
        "iterations_per_s": res.simulated_iterations / sim_s,
        "one_at_a_time_s": ref_s, "speedup_vs_one_at_a_time": ref_s / sim_s,
        "p99_ttft_s": s["ttft_s"]["p99"], "p99_tpot_s": s["tpot_s"]["p99"],
        "capacity_s": capacity_s, "capacity_target_s": CAPACITY_TARGET_S,
        "capacity_vs_target": capacity_s / CAPACITY_TARGET_S,
        "capacity_layouts": len(cap.layouts), "capacity_simulations": sum(x.simulations for x in cap.layouts),
        "capacity_best_layout": {"tp": cap.best.tp, "pp": cap.best.pp}, "capacity_best_rps": cap.best.max_rate_rps,
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return out
    print(f"case: {out['case']}")
    print(f"capacity of one GPU (p99 TTFT <= 1 s, p99 TPOT <= 50 ms): {one.max_rate_rps:.1f} requests/s")
    print(f"simulate {args.requests} requests at 80% of it ({rate:.1f}/s): {sim_s:.2f} s "
          f"({out['simulate_vs_target']:.2f} x the {SIMULATE_TARGET_S:g} s target), "
          f"{res.simulated_iterations} iterations = {out['iterations_per_s']:,.0f} iterations/s "
          f"({res.scheduled_batches} scheduled batches); one iteration at a time: {ref_s:.2f} s "
          f"({out['speedup_vs_one_at_a_time']:.2f}x slower)")
    print(f"capacity over {len(cap.layouts)} layouts ({out['capacity_simulations']} simulations): {capacity_s:.1f} s "
          f"({out['capacity_vs_target']:.2f} x the {CAPACITY_TARGET_S:g} s target); best tp={cap.best.tp} "
          f"pp={cap.best.pp}")
    return out


if __name__ == "__main__":
    main()
