"""Workload (what is asked) and Policy (how it runs): frozen, validated dataclasses.

Placement fractions are 0..1 (``_frac``) and each triple sums to 1; the CLI takes percents
and converts once (``Placement.parse_percent``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from simulator.errors import PolicyError
from simulator.vocabulary import AttentionSharding, PartitionLayout

FRACTION_TOLERANCE = 1e-6
DISK_IO_MODES = ("direct", "cached")
COMPUTE_DTYPES = ("fp16", "bf16", "fp32")
EXPERT_OFFLOAD_MODES = ("prefetch", "fetch", "cpu")


# Lengths and batch sizes are torch tensor dimensions in the executor (int32); a sequence
# count is a float64 in the cost model, exact up to 2**53.
MAX_DIM = 2**31 - 1
MAX_SEQUENCES = 2**53


def _positive_int(value, label: str, maximum: int = MAX_DIM) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise PolicyError(f"{label} must be a positive integer, got {value!r}")
    if value > maximum:
        raise PolicyError(f"{label} must be at most {maximum}, got {value!r}")
    return value


@dataclass(frozen=True)
class Placement:
    """Shares of one kind of tensor on the GPU, the CPU and the disk (fractions, sum 1)."""

    gpu_frac: float = 1.0
    cpu_frac: float = 0.0
    disk_frac: float = 0.0

    def validate(self, label: str) -> "Placement":
        for tier, value in zip(("gpu", "cpu", "disk"), self.as_tuple()):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise PolicyError(f"{label}: {tier} share must be a number, got {value!r}")
            if value < -FRACTION_TOLERANCE or value > 1 + FRACTION_TOLERANCE:
                raise PolicyError(f"{label}: {tier} share {value:g} is outside 0..1")
        total = sum(self.as_tuple())
        if abs(total - 1.0) > FRACTION_TOLERANCE:
            raise PolicyError(f"{label}: shares must sum to 1 (100%), got {total:g}")
        return self

    def as_tuple(self) -> tuple[float, float, float]:
        return (self.gpu_frac, self.cpu_frac, self.disk_frac)

    @property
    def offloaded_frac(self) -> float:
        """Share not on the GPU (cpu + disk)."""
        return self.cpu_frac + self.disk_frac

    def to_percent_text(self) -> str:
        return ",".join(f"{100 * v:g}" for v in self.as_tuple())

    @classmethod
    def parse_percent(cls, text: str, flag: str) -> "Placement":
        """``"20,80,0"`` (GPU,CPU,disk percents summing to 100) -> Placement(0.2, 0.8, 0.0)."""
        parts = str(text).split(",")
        if len(parts) != 3:
            raise PolicyError(f"{flag}: expected three percents GPU,CPU,disk like 20,80,0, got {text!r}")
        try:
            values = [float(p) for p in parts]
        except ValueError:
            raise PolicyError(f"{flag}: expected numbers like 20,80,0, got {text!r}") from None
        for v in values:
            if not math.isfinite(v) or v < 0 or v > 100:
                raise PolicyError(f"{flag}: each percent must be within 0..100, got {text!r}")
        if abs(sum(values) - 100.0) > 1e-4:
            raise PolicyError(f"{flag}: percents must sum to 100, got {text!r} (sum {sum(values):g})")
        return cls(*(v / 100.0 for v in values))


@dataclass(frozen=True)
class Workload:
    """``num_sequences`` None means one block (gpu_batch_size x num_gpu_batches)."""

    prompt_len: int
    gen_len: int
    num_sequences: int | None = None

    def __post_init__(self):
        _positive_int(self.prompt_len, "--prompt-len")
        _positive_int(self.gen_len, "--gen-len")
        if self.num_sequences is not None:
            _positive_int(self.num_sequences, "--num-sequences", MAX_SEQUENCES)

    def to_dict(self) -> dict:
        return {"prompt_len": self.prompt_len, "gen_len": self.gen_len, "num_sequences": self.num_sequences}


@dataclass(frozen=True)
class Policy:
    """How to run: batch shape, where tensors live, and the runtime switches.

    - ``gpu_batch_size`` sequences go through the GPU together; ``num_gpu_batches`` of them
      form a block that shares each layer's weight load (the zig-zag schedule).
    - ``weights``/``cache``/``activations``: Placement over gpu/cpu/disk.
    - ``cpu_attention``: decode attention over CPU-resident cache runs on the CPU.
    - ``compress_weights``/``compress_cache``: group-wise 4-bit (group 64).
    - ``overlap``: transfers run on their own streams, concurrent with compute.
    - ``disk_io``: ``direct`` (O_DIRECT, the disk's own rate) or ``cached`` (reads served by
      the page cache).
    - ``dtype``: compute and storage dtype of uncompressed tensors.
    - ``tp``/``pp``/``dp``: tensor, pipeline and data parallel degrees.
    - ``expert_parallel`` (mixture of experts): the dp replicas split the routed experts
      between them and exchange tokens by all-to-all (``simulator.moe``).
    - ``expert_offload`` (mixture of experts): what happens to the routed experts whose
      weights are on the CPU or the disk: ``prefetch`` - loaded with the rest of their layer,
      ahead of its compute (FlexGen-style placement, MoE-Lightning's weight streaming);
      ``fetch`` - only those a GPU batch routes to, copied in after its routing; ``cpu`` -
      computed on the CPU, never copied to the GPU (Fiddler). ``simulator.moe``.
    - ``prefill_layout``/``decode_layout``: how each phase splits a layer over the tp chips
      (``vocabulary.PartitionLayout``: Megatron's ``1d-ws`` by default, ``2d-ws``, ``wg-x``,
      ``wg-xy``, ``wg-xyz``); ``attention_layout``: the KV cache split over ``heads`` or
      ``batch`` (``simulator.layouts``, arXiv 2211.05102 section 3).
    """

    gpu_batch_size: int = 1
    num_gpu_batches: int = 1
    weights: Placement = field(default_factory=Placement)
    cache: Placement = field(default_factory=Placement)
    activations: Placement = field(default_factory=Placement)
    cpu_attention: bool = False
    compress_weights: bool = False
    compress_cache: bool = False
    overlap: bool = True
    disk_io: str = "direct"
    dtype: str = "fp16"
    tp: int = 1
    pp: int = 1
    dp: int = 1
    expert_parallel: bool = False
    expert_offload: str = "prefetch"
    prefill_layout: str = PartitionLayout.WS_1D.value
    decode_layout: str = PartitionLayout.WS_1D.value
    attention_layout: str = AttentionSharding.HEADS.value

    def __post_init__(self):
        _positive_int(self.gpu_batch_size, "--gpu-batch-size")
        _positive_int(self.num_gpu_batches, "--num-gpu-batches")
        for name in ("weights", "cache", "activations"):
            value = getattr(self, name)
            if not isinstance(value, Placement):
                raise PolicyError(f"--{name}: expected a placement, got {value!r}")
            value.validate(f"--{name}")
        for name in ("cpu_attention", "compress_weights", "compress_cache", "overlap", "expert_parallel"):
            if not isinstance(getattr(self, name), bool):
                raise PolicyError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.disk_io not in DISK_IO_MODES:
            raise PolicyError(f"--disk-io: {self.disk_io!r} is not one of {', '.join(DISK_IO_MODES)}")
        if self.dtype not in COMPUTE_DTYPES:
            raise PolicyError(f"--dtype: {self.dtype!r} is not one of {', '.join(COMPUTE_DTYPES)}")
        for name in ("tp", "pp", "dp"):
            _positive_int(getattr(self, name), f"--{name}")
        if self.expert_offload not in EXPERT_OFFLOAD_MODES:
            raise PolicyError(f"--expert-offload: {self.expert_offload!r} is not one of {', '.join(EXPERT_OFFLOAD_MODES)}")
        if self.expert_parallel and self.dp < 2:
            raise PolicyError(f"--expert-parallel splits the experts over the data-parallel replicas: it needs "
                              f"--dp 2 or more, got --dp {self.dp}")
        for name, allowed in (("prefill_layout", PartitionLayout), ("decode_layout", PartitionLayout),
                              ("attention_layout", AttentionSharding)):
            if getattr(self, name) not in {a.value for a in allowed}:
                raise PolicyError(f"--{name.replace('_', '-')}: {getattr(self, name)!r} is not one of "
                                  f"{', '.join(a.value for a in allowed)}")
        if self.cpu_attention and self.compress_cache:
            raise PolicyError("--cpu-attention with --compress-cache is not supported: CPU attention reads "
                              "the uncompressed cache")

    @property
    def block_size(self) -> int:
        """Sequences per block: gpu_batch_size x num_gpu_batches."""
        return self.gpu_batch_size * self.num_gpu_batches

    def with_(self, **changes) -> "Policy":
        return replace(self, **changes)

    def to_dict(self) -> dict:
        """Plain JSON-ready dict; placements as {gpu_frac, cpu_frac, disk_frac}."""
        out = {"gpu_batch_size": self.gpu_batch_size, "num_gpu_batches": self.num_gpu_batches}
        for name in ("weights", "cache", "activations"):
            p = getattr(self, name)
            out[name] = {"gpu_frac": p.gpu_frac, "cpu_frac": p.cpu_frac, "disk_frac": p.disk_frac}
        for name in ("cpu_attention", "compress_weights", "compress_cache", "overlap", "disk_io", "dtype",
                     "tp", "pp", "dp"):
            out[name] = getattr(self, name)
        if self.expert_parallel:  # the experts' switches, where they are not the default
            out["expert_parallel"] = True
        if self.expert_offload != EXPERT_OFFLOAD_MODES[0]:
            out["expert_offload"] = self.expert_offload
        if not self.megatron_layout:  # Megatron's split is implied (and older records carry no layout keys)
            out.update(zip(("prefill_layout", "decode_layout", "attention_layout"), self.partition_names))
        return out

    @property
    def partition_names(self) -> tuple[str, str, str]:
        """(prefill layout, decode layout, attention layout)."""
        return self.prefill_layout, self.decode_layout, self.attention_layout

    @property
    def megatron_layout(self) -> bool:
        """Megatron-LM's 1D split with heads-sharded attention in both phases (the default)."""
        return self.partition_names == (PartitionLayout.WS_1D.value, PartitionLayout.WS_1D.value,
                                        AttentionSharding.HEADS.value)

    @classmethod
    def from_dict(cls, d: dict, where: str = "policy") -> "Policy":
        if not isinstance(d, dict):
            raise PolicyError(f"{where}: expected a mapping, got {type(d).__name__}")
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise PolicyError(f"{where}: unknown key {sorted(unknown)[0]!r} (allowed: {', '.join(sorted(known))})")
        kw = dict(d)
        for name in ("weights", "cache", "activations"):
            if name not in kw:
                continue
            if not isinstance(kw[name], dict):
                raise PolicyError(f"{where}.{name}: expected a mapping of gpu_frac, cpu_frac, disk_frac; got "
                                  f"{kw[name]!r}")
            try:
                kw[name] = Placement(**kw[name]).validate(f"{where}.{name}")
            except TypeError:
                raise PolicyError(f"{where}.{name}: expected gpu_frac, cpu_frac, disk_frac; got "
                                  f"{sorted(kw[name])}") from None
        for name in ("gpu_batch_size", "num_gpu_batches", "tp", "pp", "dp"):
            if name in kw:
                _positive_int(kw[name], f"{where}.{name}")
        for name in ("cpu_attention", "compress_weights", "compress_cache", "overlap"):
            if name in kw and not isinstance(kw[name], bool):
                raise PolicyError(f"{where}.{name} must be true or false, got {kw[name]!r}")
        for name, allowed in (("disk_io", DISK_IO_MODES), ("dtype", COMPUTE_DTYPES)):
            if name in kw and (not isinstance(kw[name], str) or kw[name] not in allowed):
                raise PolicyError(f"{where}.{name} {kw[name]!r} is not one of {', '.join(allowed)}")
        try:
            return cls(**kw)
        except PolicyError as e:  # a combination of valid fields (cpu attention with a 4-bit cache)
            raise PolicyError(f"{where}: {e}") from None

    def num_sequences(self, workload: Workload) -> int:
        """The workload's sequence count, checked to be a whole number of blocks on every
        data-parallel replica (default: one block per replica)."""
        per_round = self.block_size * self.dp
        if workload.num_sequences is None:
            return per_round
        if workload.num_sequences % per_round:
            extra = f" x dp {self.dp}" if self.dp > 1 else ""
            raise PolicyError(f"--num-sequences {workload.num_sequences} is not a multiple of the block size "
                              f"{per_round} (gpu_batch_size {self.gpu_batch_size} x num_gpu_batches "
                              f"{self.num_gpu_batches}{extra})")
        return workload.num_sequences
