"""A small torch executor for OPT- and Llama-family decoder stacks under an offloading Policy.

    from validate.executor import run_policy
    result = run_policy(model, workload, policy, device="cpu", offload_dir="/tmp")
    result.to_dict()      # JSON-ready: timings per phase/component, peak memory, placements

See ``engine`` for the schedule, ``layers`` for the math, ``plan`` for placements,
``lanes`` for overlap and timing, ``storage`` for the disk tier, ``opcount`` for the
operation counts that ``simulator.cost``'s executor-contract constants describe.
"""

from validate.executor.engine import Executor, generate_logits, run_policy
from validate.executor.errors import ExecutorError, OffloadSpaceError, UnsupportedModelError
from validate.executor.plan import Plan, make_plan
from validate.executor.result import RunResult
from validate.executor.weights import state_dict

__all__ = ["Executor", "ExecutorError", "OffloadSpaceError", "Plan", "RunResult", "UnsupportedModelError",
           "generate_logits", "make_plan", "run_policy", "state_dict"]
