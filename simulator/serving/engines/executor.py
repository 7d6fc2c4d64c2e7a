"""``executor``: llmsim's own torch executor in continuous-batching mode
(validate/executor/serving.py), so that its measured runs can check the simulation.

It runs the FCFS scheduler over a paged KV cache as the ``continuous`` engine does, and
executes each batch the way Orca describes selective batching (OSDI'22, section 4.2):
GEMMs and elementwise work on the concatenated tokens, attention per request over its own
cached keys - ``attention_ops_per_request`` = 3 operator calls per request and layer
(gather its keys, gather its values, one attention), counted on the executor by
tests/test_serving_executor.py. Kernels are launched eagerly (the profile's cost each) and
no prefix caching or KV swapping is implemented.
"""

from simulator.serving.engines.base import EngineConfig, register_engine

HOST_OPS_PER_REQUEST = 4
HOST_OPS_PER_ITERATION = 2


@register_engine("executor")
def executor() -> EngineConfig:
    return EngineConfig(name="executor", source="llmsim's torch executor, continuous batching "
                        "(validate/executor/serving.py)", scheduler="fcfs", block_size=16, max_num_seqs=256,
                        max_num_batched_tokens=2048, chunked_prefill=False, prefix_caching=False,
                        preemption="recompute", preemption_modes=("recompute",), swap_space_bytes=0.0,
                        attention_ops_per_request=3, host_ops_per_iteration=HOST_OPS_PER_ITERATION,
                        host_ops_per_request=HOST_OPS_PER_REQUEST)
