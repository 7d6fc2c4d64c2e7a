"""``vllm``: vLLM 0.15 (the V1 engine) as it serves online traffic.

Its scheduler (vllm/v1/core/sched/scheduler.py) is token-budgeted FCFS: every step the
running requests get their next tokens first (decodes one, unfinished prefills a chunk),
then waiting requests are admitted while the ``max_num_batched_tokens`` budget and the
free KV blocks last; prompts are chunked to fit the budget (chunked prefill is always on
in V1), automatic prefix caching reuses full 16-token blocks of shared prompt prefixes,
and preemption recomputes (V1 does not swap). ``gpu_memory_utilization`` 0.9 and
``max_num_seqs`` 256 are vLLM's defaults; ``max_num_batched_tokens`` 2048 is the value 11
of the 13 published vLLM 0.15.1 runs in ``validate/records/published/serving`` used.

How it runs the model (engine data; each changes what an operation costs, not the machine):
- CUDA graphs: vLLM captures the forward pass in CUDA graphs (piecewise around attention in
  V1) and replays them, so a kernel costs the graph's per-kernel overhead rather than an
  eager launch: ``launch_s`` = 0.5 us (NVIDIA Technical Blog, "Getting Started with CUDA
  Graphs", 2019: 3.4 us per short kernel in a graph against 2.9 us of kernel alone).
- Fused layers: a Llama-family decoder layer runs 4 GEMMs (fused QKV, O, fused gate-up,
  down) and 6 other kernels - two fused residual-add RMSNorms, rotary embedding, the KV
  cache write, one attention kernel for the whole batch, SiLU-and-mul
  (vllm/model_executor/models/llama.py with the FlashAttention backend): ``layer_kernels``
  = 6, against the executor's unfused ones.
- Custom all-reduce: small tensor-parallel all-reduces run as vLLM's one-shot kernel
  over NVLink (vllm/distributed/device_communicators/custom_all_reduce.py), one latency
  instead of a ring's 2 (tp - 1) steps.
Not modelled (no published figure to take them from): the host time per step that does
not overlap the GPU (``overhead_s`` = 0) and the API server's per-request time
(tokenization, HTTP, inter-process hops) before a request reaches the scheduler.
"""

from simulator.serving.engines.base import EngineConfig, register_engine


@register_engine("vllm")
def vllm() -> EngineConfig:
    return EngineConfig(name="vllm", source="vLLM 0.15 V1 engine: chunked prefill, automatic prefix caching, "
                        "recompute preemption", scheduler="fcfs", block_size=16, max_num_seqs=256,
                        max_num_batched_tokens=2048, chunked_prefill=True, prefix_caching=True,
                        preemption="recompute", preemption_modes=("recompute",), gpu_memory_utilization=0.9,
                        swap_space_bytes=0.0, launch_s=0.5e-6, layer_kernels=6, one_shot_allreduce=True)
