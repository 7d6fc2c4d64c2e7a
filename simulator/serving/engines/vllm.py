"""``vllm``: vLLM 0.15 (the V1 engine) as it serves online traffic.

Its scheduler (vllm/v1/core/sched/scheduler.py) is token-budgeted FCFS: every step the
running requests get their next tokens first (decodes one, unfinished prefills a chunk),
then waiting requests are admitted while the ``max_num_batched_tokens`` budget and the
free KV blocks last; prompts are chunked to fit the budget (chunked prefill is always on
in V1), automatic prefix caching reuses full 16-token blocks of shared prompt prefixes,
and preemption recomputes (V1 does not swap). ``gpu_memory_utilization`` 0.9 is vLLM's
default. Batch limits (``batch_defaults``): ``vllm serve`` sizes them by the GPU
(vllm/engine/arg_utils.py ``get_batch_defaults``, the same in v0.12.0 and later): on a GPU
of at least 70 GiB that is not an A100 (H100, H200, MI300X) ``max_num_batched_tokens`` 8192
and ``max_num_seqs`` 1024, else 2048 and 256 (PR #17885: larger budgets cost the A100
throughput). Without a profile the engine keeps 2048 and 256 - the values 11 of the 13
published vLLM 0.15.1 runs in ``validate/records/published/serving`` set themselves.

How it schedules (engine data, each with its source):
- Async scheduling (``async_scheduling``): on by default since vLLM 0.14 (release notes:
  "Async scheduling is now enabled by default", PR #27614; the design of PR #19970: "the
  scheduler operate[s] one step ahead of the current execution"). The engine core keeps a queue of two batches
  (vllm/v1/engine/core.py, ``step_with_batch_queue``): it forms batch k+1 as soon as batch
  k is launched, then waits for batch k-1's output. A request that reaches a busy engine
  therefore misses the batch already formed and joins the one after it: its TTFT gains
  one iteration, while the decodes of running requests see no gap.
- Host time per step (``overhead_s`` = 160 us): even with the next batch prepared ahead,
  the GPU idles between CUDA-graph steps while the step's inputs reach it; vLLM PR #11133
  (V1 async scheduling prototype, Llama-2-7B, batch 256) measured that token gap at
  150-170 us with CUDA graphs (from 5-6 ms without the overlap); the midpoint is taken.

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
- Custom all-reduce (``custom_allreduce``): tensor-parallel all-reduces run as vLLM's own
  kernel over NVLink, one stage for small messages and two stages (reduce-scatter,
  all-gather through peer memory) for larger ones, within its buffer
  (csrc/custom_all_reduce.cuh; ``simulator.serving.costs.custom_allreduce_time_s``).
- Decode attention of models without grouped queries (``mha_decode_read_share`` = 0.64):
  vLLM's FlashAttention backend runs FlashAttention-3's paged decode on Hopper, which
  reads an MHA model's K/V cache well below the copy rate while it keeps up with
  FlashInfer on GQA (Dao-AILab/flash-attention issue #1572, 2025-04: on an H100 with CUDA
  graphs, batch 16, 32 query and 32 K/V heads of 128, pages of 8 tokens, 1796 and 1849
  GB/s at contexts 2000 and 4000); 1849 / 2890 GB/s, the H100's measured device copy
  (``h100-sxm-8x``), is 0.64. The published vLLM 0.15.1 runs of Llama-2-7B (MHA) on an
  H100 are still predicted 9-21% fast: their K/V read is slower than that.
- Decode GEMMs take the profile's GPU figures, which a CUDA graph does not change: the
  read rate of a weight-streaming GEMM and its fixed time beside its bytes
  (``gpu.gemm_memory_GBps``, ``gpu.gemm_fixed_us``; on ``h100-sxm-8x`` the published
  cuBLAS line 4.4 us + bytes / 3.18 TB/s).
Not modelled (no published figure to take them from): the API server's time per request
(HTTP, tokenization, the inter-process hops to the engine core and back, detokenization
and streaming of each token); the host time of a step that synchronous scheduling (vLLM
before 0.14) leaves exposed - the aiconfigurator rows of vLLM 0.12 run ~2 ms plus ~45 us
per running request longer per step than simulated, at every tp alike; and the efficiency
of paged attention over 16-token blocks below the profile's copy bandwidth.
"""

from simulator.serving.engines.base import EngineConfig, register_engine
from simulator.units import GiB

MHA_DECODE_READ_SHARE = 1849 / 2890  # FA3 paged MHA decode on an H100 (flash-attention #1572) / the H100's device copy
STEP_GAP_S = 160e-6  # vLLM PR #11133: 150-170 us between CUDA-graph decode steps with the next step prepared ahead


LARGE_GPU_BYTES = 70 * GiB  # vllm/engine/arg_utils.py get_batch_defaults: the larger defaults from here


def batch_defaults(hw) -> dict:
    """``max_num_batched_tokens`` and ``max_num_seqs`` as ``vllm serve`` (the OpenAI API
    server) picks them for the GPU of ``hw`` (module docstring); {} on a CPU-only profile
    (vLLM's CPU backend is not this engine)."""
    if hw.device_is_host:
        return {}
    dev = hw.device
    if dev.memory_bytes >= LARGE_GPU_BYTES and "a100" not in dev.name.lower():
        return {"max_num_batched_tokens": 8192, "max_num_seqs": 1024}
    return {"max_num_batched_tokens": 2048, "max_num_seqs": 256}


@register_engine("vllm", hardware_defaults=batch_defaults)
def vllm() -> EngineConfig:
    return EngineConfig(name="vllm", source="vLLM 0.15 V1 engine: chunked prefill, automatic prefix caching, "
                        "recompute preemption, async scheduling", scheduler="fcfs", block_size=16,
                        max_num_seqs=256, max_num_batched_tokens=2048, chunked_prefill=True, prefix_caching=True,
                        preemption="recompute", preemption_modes=("recompute",), gpu_memory_utilization=0.9,
                        swap_space_bytes=0.0, overhead_s=STEP_GAP_S, launch_s=0.5e-6, layer_kernels=6,
                        custom_allreduce=True, async_scheduling=True, mha_decode_read_share=MHA_DECODE_READ_SHARE)
