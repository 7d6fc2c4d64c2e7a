"""RunResult: what one executor run measured, JSON-ready through ``to_dict()``.

Units are SI (seconds, bytes, bytes/s); names come from ``simulator.vocabulary``: phases
``prefill``/``decode``, components ``weight_load``, ``cache_load``... and resources
``h2d``, ``d2h``, ``disk_read``, ``disk_write``, ``gpu``, ``cpu``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from simulator.units import format_bytes, format_duration, format_rate


@dataclass
class RunResult:
    """Measured generation of ``num_sequences`` sequences (``num_blocks`` blocks, one after another).

    - ``tokens``: generated ids, num_sequences x gen_len (the first comes from the prefill).
    - ``prefill_s``; ``decode_step_s[t]``: step t+1 summed over blocks; ``decode_s`` their sum;
      ``total_s = prefill_s + decode_s`` (lanes drained at the end of each block).
    - ``throughput_tok_s = N x gen_len / total_s``; ``decode_throughput_tok_s = N x
      (gen_len - 1) / decode_s`` (None when gen_len is 1), as FlexGen reports them.
    - ``breakdown``: rows {phase, component, resource, time_s, bytes}: busy time of each
      lane or compute region and the bytes it moved. With overlap they do not add up to
      the latency. ``component_s`` sums them per phase and component. With
      ``compute_timing == "coarse"`` GEMMs, attention and elementwise work on the GPU are
      one ``compute`` entry (per-kernel-group events would perturb the GPU timeline).
    - ``peak_memory_bytes`` {gpu, cpu, disk}: CUDA's max_memory_allocated on a GPU, else the
      executor's device-tier buffers; pinned/host buffers the executor allocated; bytes of
      the offload files.
    - ``placement``: the fractions really placed (whole tensors / rows), per tensor kind.
    - ``bandwidth``: bytes moved per decode step per lane, the rate that achieves over the
      mean decode step, and, for bounds that were given, the bound and the fraction of it.
    """

    model: str
    device: str
    torch_version: str
    policy: dict
    workload: dict
    num_sequences: int
    block_size: int
    num_blocks: int
    tokens: list
    prefill_s: float
    decode_step_s: list
    decode_s: float
    total_s: float
    throughput_tok_s: float
    decode_throughput_tok_s: float | None
    component_s: dict
    breakdown: list
    peak_memory_bytes: dict
    placement: dict
    disk_io_mode_used: str | None
    compute_timing: str
    bandwidth: dict
    notes: list = field(default_factory=list)
    logits: object = field(default=None, repr=False)  # torch.Tensor (N, gen_len, V) fp32 when asked
    experts: dict = field(default_factory=dict)  # mixture of experts: validate.executor.moe.ExpertStore.stats

    def to_dict(self) -> dict:
        out = asdict(self)
        out.pop("logits")
        if not out["experts"]:
            out.pop("experts")
        return out

    def summary(self) -> str:
        """A few human lines: latency, throughput, and achieved bandwidth next to its bound."""
        lines = [f"{self.model} on {self.device}: prefill {format_duration(self.prefill_s)}, "
                 f"decode {format_duration(self.decode_s)}, {self.throughput_tok_s:.1f} tok/s"]
        for lane, row in self.bandwidth.get("lanes", {}).items():
            if not row["bytes_per_step"]:
                continue
            line = (f"  decode {lane}: {format_bytes(row['bytes_per_step'])}/step at "
                    f"{format_rate(row['achieved_bytes_per_s'])}")
            if row.get("bound_bytes_per_s"):
                line += f" ({100 * row['bound_frac']:.0f}% of the {format_rate(row['bound_bytes_per_s'])} bound)"
            lines.append(line)
        hbm = self.bandwidth.get("hbm")
        if hbm:
            line = (f"  decode memory: {format_bytes(hbm['bytes_per_step'])}/step (weights + KV read) at "
                    f"{format_rate(hbm['achieved_bytes_per_s'])}")
            if hbm.get("bound_bytes_per_s"):
                line += f" ({100 * hbm['bound_frac']:.0f}% of the {format_rate(hbm['bound_bytes_per_s'])} bound)"
            lines.append(line)
        return "\n".join(lines)
