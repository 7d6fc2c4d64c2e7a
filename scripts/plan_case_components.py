"""The CPU suite's plan case, component by component: what ``plan`` chooses for the suite's
OPT on this machine, run on the executor beside the suite's fp32 resident case, with each
component's measured and predicted seconds (the executor's timers against ``estimate()``).

    python scripts/plan_case_components.py [--profile PROFILE.yaml] [--repeats N]

Without ``--profile`` it first profiles this machine as the suite does (one compute thread,
the suite's focus: 1-2 minutes on the 2-core machine). Prints one line per case and one per
(phase, component). A diagnostic for the plan case's misses (README, "Measured figures");
bad input: one line, exit 2.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from simulator.errors import LlmsimError  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", help="a profile of this machine (default: profile it as the suite does)")
    ap.add_argument("--repeats", type=int, default=3, help="executor runs per case (the median is compared)")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        sys.stderr.write(f"plan_case_components: error: --repeats must be at least 1, got {args.repeats}\n")
        return 2
    import numpy as np
    import torch

    from llmsim import suites
    from simulator.hardware import load_profile
    from validate.harness import compare, execute

    torch.set_num_threads(1)
    opt, llama = suites.ci_models()
    work = tempfile.mkdtemp(prefix="plan-case-")
    try:
        if args.profile:
            hw = load_profile(args.profile)
        else:
            guard = suites.NoiseGuard(suites.SuiteState())
            hw = suites._profile(work, str(Path(work) / "ci-cpu.yaml"), [opt, llama, suites.ci_moe_model([opt, llama])],
                                 guard, print, False)
        plan = suites.planned(opt)(hw)
    except (LlmsimError, suites.TooBusy) as e:
        sys.stderr.write(f"plan_case_components: error: {e}\n")
        return 2
    resident = suites.ci_cases([opt, llama])[0][2]
    for name, policy in ((f"plan ({plan.dtype})", plan), ("fp32 resident", resident)):
        runs = execute(opt, suites.CI_WORKLOAD, policy, "cpu", work, repeats=args.repeats)
        tps = [r["throughput_tok_s"] for r in runs]
        res = compare(opt, hw, suites.CI_WORKLOAD, policy, runs[int(np.argsort(tps)[len(tps) // 2])])
        print(f"{name}: measured {', '.join(f'{x:.1f}' for x in tps)} tok/s, predicted "
              f"{res['predicted']['throughput_tok_s']:.1f} ({res['errors']['throughput_tok_s']:+.1%})")
        for c in res["components"]:
            ratio = c["measured_s"] / c["predicted_s"] if c["predicted_s"] else float("inf")
            print(f"  {c['phase']:8s} {c['component']:12s} measured {c['measured_s']:.4f} s  predicted "
                  f"{c['predicted_s']:.4f} s  measured/predicted {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
