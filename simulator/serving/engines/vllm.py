"""``vllm``: vLLM 0.15 (the V1 engine) as it serves online traffic.

Its scheduler (vllm/v1/core/sched/scheduler.py) is token-budgeted FCFS: every step the
running requests get their next tokens first (decodes one, unfinished prefills a chunk),
then waiting requests are admitted while the ``max_num_batched_tokens`` budget and the
free KV blocks last; prompts are chunked to fit the budget (chunked prefill is always on
in V1), automatic prefix caching reuses full 16-token blocks of shared prompt prefixes,
and preemption recomputes (V1 does not swap). ``gpu_memory_utilization`` 0.9 and
``max_num_seqs`` 256 are vLLM's defaults; ``max_num_batched_tokens`` 2048 is the value 11
of the 13 published vLLM 0.15.1 runs in ``validate/records/published/serving`` used.
"""

from simulator.serving.engines.base import EngineConfig, register_engine


@register_engine("vllm")
def vllm() -> EngineConfig:
    return EngineConfig(name="vllm", source="vLLM 0.15 V1 engine: chunked prefill, automatic prefix caching, "
                        "recompute preemption", scheduler="fcfs", block_size=16, max_num_seqs=256,
                        max_num_batched_tokens=2048, chunked_prefill=True, prefix_caching=True,
                        preemption="recompute", preemption_modes=("recompute",), gpu_memory_utilization=0.9,
                        swap_space_bytes=0.0)
