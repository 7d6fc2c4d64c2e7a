"""``continuous``: the generic iteration-level server (Orca, OSDI'22, over vLLM's paged KV).

Orca (Yu et al., OSDI'22): the batch is re-formed every iteration (section 4.1) and runs
selectively batched (section 4.2): prompts are prefilled whole, beside the decodes of the
running requests, within a token budget. vLLM (Kwon et al., SOSP'23): a paged KV cache of
16-token blocks (section 4.2, the block size its evaluation uses), FCFS admission by free
blocks, preemption of the latest-arrived request when blocks run out (section 4.5), by
recomputation by default or by swapping to 4 GiB of CPU memory per GPU (vLLM's
``--swap-space`` default). No host overhead per iteration: the generic engine is the cost
of the operations alone.
"""

from simulator.serving.engines.base import EngineConfig, register_engine


@register_engine("continuous")
def continuous() -> EngineConfig:
    return EngineConfig(name="continuous", source="Orca (OSDI'22) iteration-level scheduling, vLLM (SOSP'23) "
                        "paged KV; no engine overheads", scheduler="fcfs", block_size=16, max_num_seqs=256,
                        max_num_batched_tokens=8192, chunked_prefill=False, prefix_caching=False,
                        preemption="recompute", gpu_memory_utilization=0.9)
