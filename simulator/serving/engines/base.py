"""``EngineConfig`` and the engine registry (see the package docstring)."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Callable

from simulator.errors import PolicyError
from simulator.units import GiB

# Block sizes, batch limits and block counts are tensor dimensions (int32) on the executor.
MAX_COUNT = 2**31 - 1
PREEMPTION_MODES = ("recompute", "swap")


@dataclass(frozen=True)
class EngineConfig:
    """How one replica serves (Orca's iteration-level scheduling over vLLM's paged KV).

    - ``scheduler``: a name of ``simulator.serving.schedulers``.
    - ``block_size``: tokens per KV block; ``num_gpu_blocks``: override the computed count
      (vLLM's ``--num-gpu-blocks-override``).
    - ``max_num_seqs``, ``max_num_batched_tokens``: sequences and tokens per iteration.
    - ``chunked_prefill``: split prompts over iterations beside the decodes (Sarathi);
      without it a prompt is prefilled in one iteration, and must fit the token budget.
    - ``prefix_caching``: prompts that share a prefix group reuse its cached full blocks.
    - ``preemption``: when blocks run out, ``recompute`` (free the victim's blocks and
      prefill it again later) or ``swap`` (move its blocks to ``swap_space_bytes`` of CPU
      memory per GPU and back; recompute when that is full).
    - ``gpu_memory_utilization``: share of the GPU's usable memory the engine takes.
    - ``weights_cpu_frac``: share of the weights kept in CPU memory and streamed per layer.
    - ``overhead_s``: host time per iteration (scheduling, input preparation, sampling)
      that does not overlap the GPU's work; engine data with a source.
    - ``dtype``: compute and KV dtype (None: the model's, if the GPU rates it).
    - ``launch_s``: the fixed cost of one kernel as this engine launches them (CUDA graph
      replay costs less than an eager launch); None: the profile's ``kernel_launch_us``.
    - ``layer_kernels``: the non-GEMM kernels one decoder layer runs (norms, activations,
      rotary, cache writes, attention) when the engine fuses them; None: the executor's
      count (``simulator.engines.llmsim``'s ELEMENTWISE_KERNELS plus one attention kernel).
    - ``custom_allreduce``: tensor-parallel all-reduces run as vLLM's custom kernel over
      NVLink (one or two stages through peer memory by message size, NCCL's ring above
      8 MiB; ``simulator.serving.costs.custom_allreduce_time_s``) instead of NCCL's ring.
    - ``async_scheduling``: the scheduler forms the next batch while the current one runs on
      the GPU (one step ahead), so a request that reaches a busy server joins the batch
      after the next one; an idle server schedules it at once.
    - ``attention_ops_per_request``: attention runs per request (Orca's selective batching,
      as llmsim's executor does) with this many kernel launches each, instead of one kernel
      for the whole batch; each request's K/V rows are copied out of the paged pool first,
      and its chunks attend with an explicit mask over all (query, key) pairs
      (``simulator.serving.costs``); None: one kernel per kind (prefill chunks, decodes)
      per layer.
    - ``host_ops_per_iteration``, ``host_ops_per_request``: torch operations the engine's
      host runs to build an iteration's inputs (per iteration, and per request in the
      batch), each at the device's launch cost, serial with the iteration's compute (the
      host waits for the sampled tokens before it builds the next batch); counted on the
      engine where it is llmsim's executor.
    - ``mha_decode_read_share``: the share of the device's memory rate at which the engine's
      decode-attention kernel reads the K/V cache of a model without grouped queries (as
      many K/V heads as query heads); engine data with a source, 1: the device's rate.
    """

    name: str
    source: str = ""
    scheduler: str = "fcfs"
    block_size: int = 16
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    chunked_prefill: bool = False
    prefix_caching: bool = False
    preemption: str = "recompute"
    swap_space_bytes: float = 4 * GiB
    gpu_memory_utilization: float = 0.9
    weights_cpu_frac: float = 0.0
    overhead_s: float = 0.0
    num_gpu_blocks: int | None = None
    dtype: str | None = None
    preemption_modes: tuple = PREEMPTION_MODES  # the modes this engine implements
    launch_s: float | None = None  # fixed cost of one kernel (None: the profile's kernel_launch_us)
    layer_kernels: int | None = None  # non-GEMM kernels per layer (None: the cost model's executor count)
    custom_allreduce: bool = False  # vLLM's custom all-reduce (one/two stages by size) instead of the ring
    attention_ops_per_request: int | None = None  # attention per request (Orca's selective batching), its launches
    async_scheduling: bool = False  # the next batch is formed while this one runs: arrivals join one iteration later
    host_ops_per_iteration: int = 0  # host torch ops building an iteration's inputs
    host_ops_per_request: int = 0  # ... and per request in its batch
    mha_decode_read_share: float = 1.0  # decode attention of an MHA model reads K/V at this share of the device rate

    def __post_init__(self):
        for flag, name in (("--block-size", "block_size"), ("--max-num-seqs", "max_num_seqs"),
                           ("--max-num-batched-tokens", "max_num_batched_tokens")):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise PolicyError(f"{flag} must be a positive integer, got {v!r}")
            if v > MAX_COUNT:
                raise PolicyError(f"{flag} must be at most {MAX_COUNT}, got {v!r}")
        if self.num_gpu_blocks is not None and (isinstance(self.num_gpu_blocks, bool)
                                                or not isinstance(self.num_gpu_blocks, int)
                                                or not 1 <= self.num_gpu_blocks <= MAX_COUNT):
            raise PolicyError(f"--num-gpu-blocks must be a positive integer at most {MAX_COUNT}, "
                              f"got {self.num_gpu_blocks!r}")
        if self.preemption not in self.preemption_modes:
            raise PolicyError(f"--preemption: {self.preemption!r} is not one of {', '.join(self.preemption_modes)} "
                              f"(engine {self.name})")
        for flag, name, lo, hi in (("--gpu-memory-utilization", "gpu_memory_utilization", 0.0, 1.0),
                                   ("--weights-cpu", "weights_cpu_frac", 0.0, 1.0)):
            v = getattr(self, name)
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            if not ok or not (lo <= v <= hi) or (name == "gpu_memory_utilization" and v == 0):
                raise PolicyError(f"{flag} must be within {'(0' if name == 'gpu_memory_utilization' else '[0'}, 1], "
                                  f"got {v!r}")
        for flag, name in (("--swap-space", "swap_space_bytes"), ("overhead_s", "overhead_s"),
                           ("launch_s", "launch_s")):
            v = getattr(self, name)
            if v is None and name == "launch_s":
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise PolicyError(f"{flag} must be a number >= 0, got {v!r}")
        v = self.mha_decode_read_share
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 < v <= 1:
            raise PolicyError(f"mha_decode_read_share must be within (0, 1], got {v!r} (engine {self.name})")

    def with_(self, **changes) -> "EngineConfig":
        """A copy with the given fields replaced; None values are ignored (flags left unset)."""
        known = {f.name for f in fields(self)}
        bad = sorted(set(changes) - known)
        if bad:
            raise PolicyError(f"engine {self.name}: unknown setting {bad[0]!r}")
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


ENGINES: dict[str, Callable[[], EngineConfig]] = {}
HARDWARE_DEFAULTS: dict[str, Callable[[object], dict]] = {}


def register_engine(name: str, hardware_defaults: Callable[[object], dict] | None = None):
    """Decorator: register a factory ``() -> EngineConfig`` under ``name``.
    ``hardware_defaults(hw)``: the settings the engine itself picks for a machine (vLLM
    sizes its batch limits by the GPU's memory), applied under the user's flags."""
    def deco(factory):
        if name in ENGINES:
            raise ValueError(f"engine {name!r} registered twice")
        ENGINES[name] = factory
        if hardware_defaults is not None:
            HARDWARE_DEFAULTS[name] = hardware_defaults
        return factory
    return deco


def list_engines() -> list[str]:
    return sorted(ENGINES)


def get_engine(name: str, hw=None, **overrides) -> EngineConfig:
    """The engine's defaults - on ``hw`` (a HardwareProfile), the ones the engine picks for
    that machine - with the given overrides (None: keep the default)."""
    key = str(name).strip().lower()
    if key not in ENGINES:
        raise PolicyError(f"--engine: unknown serving engine {name!r} (known: {', '.join(list_engines())})")
    cfg = ENGINES[key]()
    if hw is not None and key in HARDWARE_DEFAULTS:
        cfg = cfg.with_(**HARDWARE_DEFAULTS[key](hw))
    return cfg.with_(**overrides)
