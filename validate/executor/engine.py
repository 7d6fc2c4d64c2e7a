"""The executor: greedy generation under a Policy with FlexGen's zig-zag block schedule.

Schedule (what ``simulator.cost`` assumes; FlexGen, arXiv 2303.06865, section 4.1)
---------------------------------------------------------------------------------
A block of ``gpu_batch_size x num_gpu_batches`` sequences runs step by step (the prefill,
then ``gen_len - 1`` decode steps). Within a step, layer by layer::

    for layer j:                      weights of j: one copy per source tier (cpu, disk),
                                      dequantized once if compressed
        for GPU batch k:              load k's offloaded cache rows and activations,
                                      compute (CPU attention for CPU-side rows if asked),
                                      store k's new K/V and its output activations
    head: final norm, LM head (streamed rows loaded once), argmax, for every batch

With ``overlap`` the next weight unit (layer or LM head), the next item's cache and
activations, and the previous item's stores run on the transfer lanes
(``validate.executor.lanes``) while the current item computes. Layer 0 takes the
embedding of the step's tokens and the last layer hands its output straight to the head,
so activations move between layers: ``num_layers - 1`` loads and stores per batch and step.

Memory (what ``simulator.memory`` assumes): the device holds each layer's GPU share, two
weight slots for the streamed shares, the streamed rows of the LM head, two cache and two
activation working buffers, and one dequantization buffer; the host holds the CPU shares
in pinned memory and two pinned bounce buffers per disk-backed kind.
"""

from __future__ import annotations

import contextlib
import math
import time

import torch
import torch.nn.functional as F

from simulator.errors import PolicyError
from simulator.models import ModelSpec
from simulator.policy import Policy, Workload
from simulator.vocabulary import TIERS, Component, Phase, Resource, Tier
from validate.executor import layers
from validate.executor.errors import ExecutorError
from validate.executor.lanes import Lanes, Ticket, Timers, wait_all
from validate.executor.moe import ExpertStore
from validate.executor.plan import Pack, Plan, RowSplit, make_plan
from validate.executor.quant import GROUP, ROW, dequantize, num_groups, quantize
from validate.executor.result import RunResult
from validate.executor.storage import OffloadDir, host_buffer, round_up, sigterm_as_exit
from validate.executor.weights import layer_prefix, weight_source

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
C, R = Component, Resource
OFFLOADED = (Tier.CPU, Tier.DISK)


def resolve_device(device: str | torch.device) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ExecutorError(f"--device {device}: CUDA is not available on this machine (torch "
                                f"{torch.__version__}); use --device cpu")
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
    elif dev.type != "cpu":
        raise ExecutorError(f"--device {device}: expected cpu or cuda")
    return dev


class Runtime:
    """Per-run services: device, lanes, timers, buffer accounting, offload files, notes."""

    def __init__(self, device: torch.device, policy: Policy, split_compute: bool, offload: OffloadDir | None):
        self.device = device
        self.cuda = device.type == "cuda"
        self.pinned = self.cuda
        self.dtype = DTYPES[policy.dtype]
        self.timers = Timers(self.cuda, split_compute)
        self.lanes = Lanes(device, policy.overlap, self.timers)
        self.offload = offload
        self.disk_io = policy.disk_io
        self.notes: list[str] = []
        self.tracked = {Tier.GPU: 0, Tier.CPU: 0}

    def device_buffer(self, nbytes: int) -> torch.Tensor:
        self.tracked[Tier.GPU] += nbytes
        return torch.empty(nbytes, dtype=torch.uint8, device=self.device)

    def host_buffer(self, nbytes: int) -> torch.Tensor:
        self.tracked[Tier.CPU] += nbytes
        return host_buffer(nbytes, self.pinned)

    def open_disk(self, name: str, size: int):
        return self.offload.open(name, size, self.disk_io, self.notes)

    def region(self, component, label=None, resource=R.GPU):
        return self.timers.region(component, label, resource)

    def submit(self, lane, fn, deps, phase, component, nbytes) -> Ticket:
        return self.lanes.submit(lane, fn, deps, phase, component, nbytes)


def _copy(dst: torch.Tensor, src: torch.Tensor):
    """A lane task copying src into dst (bound now: closures over loop variables would rebind)."""
    return lambda: dst.copy_(src, non_blocking=True)


def _read(file, offset: int, buf: torch.Tensor):
    return lambda: file.read(offset, buf)


def _write(file, offset: int, buf: torch.Tensor):
    return lambda: file.write(offset, buf)


def _as_bytes(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().reshape(-1).view(torch.uint8)


def _encode(t: torch.Tensor, compressed: bool, dtype: torch.dtype) -> torch.Tensor:
    """A checkpoint tensor in its storage format, as bytes."""
    return _as_bytes(quantize(t.float()) if compressed else t.to(dtype))


def _views(buf: torch.Tensor, pack: Pack, dtype: torch.dtype) -> dict:
    out = {}
    for x in pack.layouts:
        raw = buf[x.offset:x.offset + x.nbytes]
        out[x.name] = raw.view(x.shape[0], num_groups(x.shape[1]), ROW) if x.compressed else \
            raw.view(dtype).view(x.shape)
    return out


# ---------------------------------------------------------------------------- weights
class LayerWeights:
    """Every decoder layer's weights by tier, and the two device slots streamed shares land in."""

    def __init__(self, rt: Runtime, plan: Plan, source):
        spec, dtype = plan.spec, rt.dtype
        self.rt = rt
        L = spec.num_layers
        packs = plan.packs
        self.n = {t: packs[t].nbytes for t in TIERS}
        ng, nc, nd = self.n[Tier.GPU], self.n[Tier.CPU], self.n[Tier.DISK]
        self.disk_region = round_up(nd)
        self.gpu = rt.device_buffer(L * ng)
        self.cpu = rt.host_buffer(L * nc)
        self.file = rt.open_disk("layers.bin", L * self.disk_region) if nd else None
        self.slots = [rt.device_buffer(nc + nd) for _ in range(2)] if nc + nd else []
        self.bounce = [rt.host_buffer(self.disk_region) for _ in range(2)] if nd else []
        staging = host_buffer(max(ng, self.disk_region), pinned=False)
        for j in range(L):
            prefix = layer_prefix(spec, j)

            def fill(buf, pack):
                for x in pack.layouts:
                    buf[x.offset:x.offset + x.nbytes].copy_(
                        _encode(source.get(prefix + x.name, x.shape), x.compressed, dtype))

            if ng:
                fill(staging, packs[Tier.GPU])
                self.gpu[j * ng:(j + 1) * ng].copy_(staging[:ng])
            if nc:
                fill(self.cpu[j * nc:(j + 1) * nc], packs[Tier.CPU])
            if nd:
                staging[:self.disk_region].zero_()
                fill(staging, packs[Tier.DISK])
                self.file.write(j * self.disk_region, staging[:self.disk_region])
        self.gpu_views = [_views(self.gpu[j * ng:(j + 1) * ng], packs[Tier.GPU], dtype) for j in range(L)]
        self.slot_views = [{**_views(s[:nc], packs[Tier.CPU], dtype), **_views(s[nc:], packs[Tier.DISK], dtype)}
                           for s in self.slots]
        self.slot_free = [[], []]
        self.bounce_free = [[], []]
        # Compressed matrices: each tier's block is expanded by one dequantization call into
        # its own region of one dequantization buffer (shared with the LM head, used in turn).
        self.blocks = {t: packs[t] for t in TIERS if packs[t].compressed_bytes}
        self.compressed = bool(self.blocks)
        self.dq_views, self.dq_blocks = {}, {}
        if self.compressed:
            e = torch.finfo(dtype).bits // 8
            groups = sum(p.compressed_groups for p in self.blocks.values())
            lm_bytes = spec.vocab_size * num_groups(spec.hidden_size) * GROUP * e
            self.dq = rt.device_buffer(max(groups * GROUP * e, lm_bytes)).view(dtype)
            off = 0
            for tier, p in self.blocks.items():
                self.dq_blocks[tier] = self.dq[off:off + p.compressed_groups * GROUP].view(-1, GROUP)
                for x in p.layouts:
                    if x.compressed:
                        rows, cols = x.shape
                        start = off + x.offset // ROW * GROUP
                        full = self.dq[start:start + rows * num_groups(cols) * GROUP].view(rows, -1)
                        self.dq_views[x.name] = full[:, :cols]
                off += p.compressed_groups * GROUP

    def issue(self, j: int, s: int, phase: str) -> list[Ticket]:
        """Load layer j's CPU and disk shares into slot s: one copy per source tier."""
        rt, out = self.rt, []
        nc, nd = self.n[Tier.CPU], self.n[Tier.DISK]
        deps = self.slot_free[s]
        slot = self.slots[s] if self.slots else None
        if nc:
            src, dst = self.cpu[j * nc:(j + 1) * nc], slot[:nc]
            out.append(rt.submit(R.H2D, _copy(dst, src), deps, phase, C.WEIGHT_LOAD, nc))
        if nd:
            bounce, region = self.bounce[s], self.disk_region
            rd = rt.submit(R.DISK_READ, _read(self.file, j * region, bounce), self.bounce_free[s], phase,
                           C.WEIGHT_LOAD, region)
            dst = slot[nc:nc + nd]
            cp = rt.submit(R.H2D, _copy(dst, bounce[:nd]), deps + [rd], phase,
                           C.WEIGHT_LOAD, nd)
            self.bounce_free[s] = [cp]
            out.append(cp)
        return out

    def tensors(self, j: int, s: int) -> dict:
        """Layer j's weights for compute (slot s holds its streamed shares), dequantized if compressed."""
        w = dict(self.gpu_views[j])
        if self.slots:
            w.update(self.slot_views[s])
        if self.compressed:
            ng, nc = self.n[Tier.GPU], self.n[Tier.CPU]
            starts = {Tier.GPU: (self.gpu, j * ng), Tier.CPU: (self.slots[s] if self.slots else None, 0),
                      Tier.DISK: (self.slots[s] if self.slots else None, nc)}
            with self.rt.region(C.COMPRESSION, "dequant_weights"):
                for tier, p in self.blocks.items():
                    buf, start = starts[tier]
                    src = buf[start:start + p.compressed_bytes].view(-1, 1, ROW)  # (groups, 1, 36)
                    dequantize(src, GROUP, self.rt.dtype, out=self.dq_blocks[tier])  # (groups, 64)
            w.update(self.dq_views)
        return w


class RowStore:
    """A head matrix split by rows (``plan.RowSplit``) across tiers.

    ``full``: the LM head, whose device buffer holds every row: the GPU rows stay, the
    streamed rows are loaded once per step (``issue``). Otherwise only the GPU rows live on
    the device and ``gather`` fetches offloaded rows on the host.
    """

    def __init__(self, rt: Runtime, split: RowSplit, source, full: bool):
        self.rt, self.split, self.full = rt, split, full
        g, c, d = split.counts
        rb = split.row_bytes
        self.g, self.c, self.d, self.rb = g, c, d, rb
        self.dev = rt.device_buffer((split.rows if full else g) * rb)
        self.cpu = rt.host_buffer(c * rb)
        self.region = round_up(d * rb)
        self.file = rt.open_disk(split.name + ".bin", self.region) if d else None
        self.bounce = rt.host_buffer(self.region) if d and full else None
        data = _encode(source.get(split.name, (split.rows, split.cols)), split.compressed, rt.dtype)
        self.dev[:g * rb].copy_(data[:g * rb])
        self.cpu.copy_(data[g * rb:(g + c) * rb])
        if d:
            staging = host_buffer(self.region, pinned=False)
            staging.zero_()
            staging[:d * rb].copy_(data[(g + c) * rb:])
            self.file.write(0, staging)
        self.free: list[Ticket] = []
        self.bounce_free: list[Ticket] = []

    def issue(self, phase: str) -> list[Ticket]:
        """Load the streamed rows (full matrices only): one copy per source tier."""
        rt, out = self.rt, []
        g, c, d, rb = self.g, self.c, self.d, self.rb
        if c:
            dst = self.dev[g * rb:(g + c) * rb]
            out.append(rt.submit(R.H2D, _copy(dst, self.cpu), self.free, phase,
                                 C.WEIGHT_LOAD, c * rb))
        if d:
            rd = rt.submit(R.DISK_READ, _read(self.file, 0, self.bounce), self.bounce_free, phase,
                           C.WEIGHT_LOAD, self.region)
            dst = self.dev[(g + c) * rb:]
            cp = rt.submit(R.H2D, _copy(dst, self.bounce[:d * rb]), self.free + [rd],
                           phase, C.WEIGHT_LOAD, d * rb)
            self.bounce_free = [cp]
            out.append(cp)
        return out

    def matrix(self) -> torch.Tensor:
        """(rows, G, 36) packed or (rows, cols) in the compute dtype."""
        s = self.split
        if s.compressed:
            return self.dev.view(s.rows, num_groups(s.cols), ROW)
        return self.dev.view(self.rt.dtype).view(s.rows, s.cols)

    def row_range(self, lo: int, hi: int) -> torch.Tensor:
        """Rows lo..hi-1 in storage format: a view when they are all on the device."""
        if hi <= self.g:
            rows = self.dev[lo * self.rb:hi * self.rb].view(hi - lo, self.rb)
            if self.split.compressed:
                return rows.view(hi - lo, num_groups(self.split.cols), ROW)
            return rows.view(self.rt.dtype)
        return self.gather(torch.arange(lo, hi))

    def gather(self, ids: torch.Tensor) -> torch.Tensor:
        """Rows ``ids`` (host int64, (n,)) on the device, in storage format: (n, G, 36) or (n, cols)."""
        rt, s, rb = self.rt, self.split, self.rb
        table = self.dev[:self.g * rb].view(self.g, rb)  # (g, rb) bytes of the GPU rows
        if self.g == s.rows:
            rows = table.index_select(0, ids.to(rt.device))  # (n, rb)
        else:
            n = ids.numel()
            host = torch.zeros(n, rb, dtype=torch.uint8)
            on_cpu = (ids >= self.g) & (ids < self.g + self.c)
            if on_cpu.any():
                host[on_cpu] = self.cpu.view(self.c, rb)[ids[on_cpu] - self.g]
            for i in torch.nonzero(ids >= self.g + self.c).flatten().tolist():
                off = (int(ids[i]) - self.g - self.c) * rb
                host[i] = torch.frombuffer(bytearray(self.file.read_bytes(off, rb)), dtype=torch.uint8)
            rows = host.to(rt.device)
            on_gpu = torch.nonzero(ids < self.g).flatten()
            if on_gpu.numel():
                rows[on_gpu.to(rt.device)] = table.index_select(0, ids[on_gpu].to(rt.device))
        if s.compressed:
            return rows.view(-1, num_groups(s.cols), ROW)
        return rows.view(rt.dtype)


class HeadWeights:
    """Input embedding (and OPT's positions), final norm and LM head."""

    def __init__(self, rt: Runtime, plan: Plan, source, dequant_buffer: torch.Tensor | None):
        self.rt, self.spec = rt, plan.spec
        self.lm = RowStore(rt, plan.lm_head, source, full=True)
        self.embed = RowStore(rt, plan.embed, source, full=False) if plan.embed else self.lm
        self.positions = RowStore(rt, plan.positions, source, full=False) if plan.positions else None
        self.vectors = {}
        for name, shape in plan.head_vectors:
            t = source.get(name, shape).to(rt.dtype)
            rt.tracked[Tier.GPU] += t.numel() * t.element_size()
            self.vectors[name] = t.to(rt.device)
        self.compressed = plan.lm_head.compressed
        self.dq = dequant_buffer

    def lm_matrix(self) -> torch.Tensor:
        """(V, h) in the compute dtype (dequantized once per step when compressed)."""
        w = self.lm.matrix()
        if not self.compressed:
            return w
        V, h = self.spec.vocab_size, self.spec.hidden_size
        with self.rt.region(C.COMPRESSION, "dequant_lm_head"):
            return dequantize(w, h, self.rt.dtype, out=self.dq[:V * h].view(V, h))

    def embed_tokens(self, ids: torch.Tensor, pos: int) -> torch.Tensor:
        """ids (b, t) host int64 at positions pos..pos+t-1 -> (b, t, h)."""
        b, t = ids.shape
        h, rt = self.spec.hidden_size, self.rt
        with rt.region(C.ELEMENTWISE, "head"):
            x = self.embed.gather(ids.reshape(-1))  # (b t, h) or packed (b t, G, 36)
        if self.compressed:
            with rt.region(C.COMPRESSION, "dequant_embedding"):
                x = dequantize(x, h, rt.dtype)
        x = x.view(b, t, h)
        if self.positions is not None:  # OPT: learned positions, offset by 2 rows
            with rt.region(C.ELEMENTWISE, "head"):
                p = self.positions.row_range(pos + 2, pos + 2 + t)  # (t, h)
            if self.compressed:
                with rt.region(C.COMPRESSION, "dequant_embedding"):
                    p = dequantize(p, h, rt.dtype)
            with rt.region(C.ELEMENTWISE, "head"):
                x = x + p  # (b, t, h)
        return x


# ---------------------------------------------------------------------------- KV cache
class KVCache:
    """Each GPU batch's K/V, split by (sequence, kv head) rows over the tiers.

    Every tier stores a batch's part position-major: one *slab* per token position holding
    the part's K rows then its V rows (``plan.cache_slab_bytes``; disk slabs padded to the
    O_DIRECT alignment). Positions 0..pos-1 of a part are therefore one contiguous range:
    a load is one copy per source tier, a store of new tokens one copy (plus one write).
    Parts attended on the device (the GPU part; the CPU and disk parts unless
    ``cpu_attention``) are loaded into one of two device working buffers; with
    ``cpu_attention`` the CPU part is attended in place and the disk part in its pinned
    bounce buffer, on the CPU in fp32.
    """

    def __init__(self, rt: Runtime, plan: Plan):
        spec, policy = plan.spec, plan.policy
        self.rt, self.plan, self.spec = rt, plan, spec
        self.L, self.nb, self.b = spec.num_layers, policy.num_gpu_batches, policy.gpu_batch_size
        self.R = self.b * spec.num_kv_heads
        self.T = plan.max_tokens
        self.catt = policy.cpu_attention
        self.compressed = policy.compress_cache
        self.rb = plan.cache_row_bytes
        self.parts = []  # (tier, first row, last row + 1)
        r0 = 0
        for tier, n in zip(TIERS, plan.cache_rows):
            if n:
                self.parts.append((tier, r0, r0 + n))
                r0 += n
        self.slab = {t: plan.cache_slab_bytes(t) for t in TIERS}
        self.offloaded = any(tier is not Tier.GPU for tier, _, _ in self.parts)
        L, nb, T = self.L, self.nb, self.T
        self.home = {}
        if self.slab[Tier.GPU]:
            self.home[Tier.GPU] = rt.device_buffer(L * nb * T * self.slab[Tier.GPU]).view(L, nb, T, -1)
        if self.slab[Tier.CPU]:
            self.home[Tier.CPU] = rt.host_buffer(L * nb * T * self.slab[Tier.CPU]).view(L, nb, T, -1)
        self.file = rt.open_disk("cache.bin", L * nb * T * self.slab[Tier.DISK]) if self.slab[Tier.DISK] else None
        # Device working buffers for offloaded parts: whole context when attended on the
        # device; only the new tokens (at most prompt_len) when the CPU attends.
        self.work_len = plan.workload.prompt_len if self.catt else T
        self.work = [{t: rt.device_buffer(self.work_len * self.slab[t]).view(self.work_len, -1)
                      for t in OFFLOADED if self.slab[t]} for _ in range(2)]
        self.bounce = [rt.host_buffer(T * self.slab[Tier.DISK]).view(T, -1) for _ in range(2)] \
            if self.slab[Tier.DISK] else []
        self.work_free = [[], []]
        self.bounce_free = [[], []]
        self.written = {}  # (j, k, tier) -> tickets of the last store into that home
        self.dq = None
        if self.compressed:
            G = num_groups(spec.head_dim)
            self.dq = torch.empty(T * 2 * self.R * G * GROUP, dtype=rt.dtype, device=rt.device)
            rt.tracked[Tier.GPU] += self.dq.numel() * self.dq.element_size()
        if self.catt:
            group = spec.num_heads // spec.num_kv_heads
            shape = (self.R, group, 1, spec.head_dim)
            self.q_host = host_buffer(self.R * group * spec.head_dim * self.dq_bytes(), rt.pinned)
            self.o_host = host_buffer(self.R * group * spec.head_dim * self.dq_bytes(), rt.pinned)
            rt.tracked[Tier.CPU] += 2 * self.q_host.numel()
            self.q_host = self.q_host.view(rt.dtype).view(shape)
            self.o_host = self.o_host.view(rt.dtype).view(shape)

    def dq_bytes(self) -> int:
        return torch.finfo(self.rt.dtype).bits // 8

    def host_attended(self, tier: Tier) -> bool:
        return self.catt and tier is not Tier.GPU

    def _kv(self, slabs: torch.Tensor, rows: int) -> torch.Tensor:
        """Slabs (n, slab bytes) -> (n, 2, rows, d) or packed (n, 2, rows, G, 36)."""
        used = slabs[:, :2 * rows * self.rb]
        if self.compressed:
            return used.unflatten(1, (2, rows, num_groups(self.spec.head_dim), ROW))
        return used.view(self.rt.dtype).unflatten(1, (2, rows, self.spec.head_dim))

    def _disk_offset(self, j: int, k: int, pos: int) -> int:
        return ((j * self.nb + k) * self.T + pos) * self.slab[Tier.DISK]

    def issue_load(self, j: int, k: int, slot: int, pos: int, phase: str) -> list[Ticket]:
        """Bring positions 0..pos-1 of batch k's offloaded parts towards the compute."""
        rt, out = self.rt, []
        for tier, r0, r1 in self.parts:
            if tier is Tier.GPU or pos == 0:
                continue
            slab = self.slab[tier]
            home_dep = self.written.get((j, k, tier), [])
            if tier is Tier.CPU:
                if self.catt:
                    continue
                src, dst = self.home[Tier.CPU][j, k, :pos], self.work[slot][Tier.CPU][:pos]
                out.append(rt.submit(R.H2D, _copy(dst, src),
                                     self.work_free[slot] + home_dep, phase, C.CACHE_LOAD, pos * slab))
            else:
                bounce = self.bounce[slot][:pos]
                off = self._disk_offset(j, k, 0)
                rd = rt.submit(R.DISK_READ, _read(self.file, off, bounce.reshape(-1)),
                               self.bounce_free[slot] + home_dep, phase, C.CACHE_LOAD, pos * slab)
                if self.catt:
                    out.append(rd)
                    continue
                dst = self.work[slot][Tier.DISK][:pos]
                cp = rt.submit(R.H2D, _copy(dst, bounce),
                               self.work_free[slot] + [rd], phase, C.CACHE_LOAD, pos * slab)
                self.bounce_free[slot] = [cp]
                out.append(cp)
        return out

    def attend(self, j, k, slot, pos, prefill, phase, q, k_new, v_new) -> torch.Tensor:
        """Store the t new tokens' K/V of batch k at ``pos`` and attend. Shapes as in layers."""
        rt, spec = self.rt, self.spec
        b, t, nh, d = q.shape
        nkv = spec.num_kv_heads
        group = nh // nkv
        wait_all(self.work_free[slot])  # the item two back has finished with this working buffer
        self.work_free[slot] = []
        with rt.region(C.ELEMENTWISE, "cache_rows"):
            # (t, 2, b, nkv, d) -> (t, 2, R, d): position-major K and V, rows = (sequence, kv head)
            kv_new = torch.stack([k_new.permute(1, 0, 2, 3), v_new.permute(1, 0, 2, 3)], dim=1).view(t, 2, self.R, d)
        if self.compressed:
            with rt.region(C.COMPRESSION, "quant_cache"):
                kv_new = quantize(kv_new)  # (t, 2, R, G, 36)
        with rt.region(C.ELEMENTWISE, "cache_write"):
            for tier, r0, r1 in self.parts:
                self._kv(self._device_slabs(tier, j, k, slot, pos, t), r1 - r0).copy_(kv_new[:, :, r0:r1])
        stores = self._store(j, k, slot, pos, t, phase)
        if prefill:
            with rt.region(C.ATTENTION):
                return layers.prefill_attention(q, k_new, v_new)
        q_rows = q.view(self.R, group, 1, d)  # (R, g, 1, d): the g query heads of each kv row
        outs = []
        for tier, r0, r1 in self.parts:
            if self.host_attended(tier):
                for ticket in stores[tier]["host"]:
                    ticket.wait_host()  # the CPU reads the new token's K/V from host memory
                src = self.home[Tier.CPU][j, k] if tier is Tier.CPU else self.bounce[slot]
                outs.append(self._cpu_attention(q_rows[r0:r1], self._kv(src[:pos + 1], r1 - r0)))
                continue
            src = self.home[Tier.GPU][j, k] if tier is Tier.GPU else self.work[slot][tier]
            kv = self._kv(src[:pos + 1], r1 - r0)  # (pos+1, 2, r, d) or packed
            if self.compressed:
                with rt.region(C.COMPRESSION, "dequant_cache"):
                    kv = self._dequantize(kv, r0, r1)
            with rt.region(C.ATTENTION):
                outs.append(layers.decode_attention_rows(q_rows[r0:r1], kv[:, 0].transpose(0, 1),
                                                         kv[:, 1].transpose(0, 1)))  # (r, g, 1, d)
        with rt.region(C.ATTENTION):
            o = outs[0] if len(outs) == 1 else torch.cat(outs)  # (R, g, 1, d)
            return o.reshape(b, 1, nh * d)

    def _device_slabs(self, tier, j, k, slot, pos, t) -> torch.Tensor:
        """Where the compute writes the new tokens' slabs of a part: (t, slab)."""
        if tier is Tier.GPU:
            return self.home[Tier.GPU][j, k, pos:pos + t]
        base = 0 if self.host_attended(tier) else pos
        return self.work[slot][tier][base:base + t]

    def _dequantize(self, kv: torch.Tensor, r0: int, r1: int) -> torch.Tensor:
        """(n, 2, r, G, 36) packed -> (n, 2, r, d) in the compute dtype, in the dequant buffer."""
        n, _, r, G, _ = kv.shape
        d = self.spec.head_dim
        start = 2 * n * r0 * G * GROUP
        out = self.dq[start:start + 2 * n * r * G * GROUP].view(n, 2, r, G * GROUP)
        return dequantize(kv, d, self.rt.dtype, out=out[..., :d])

    def _store(self, j, k, slot, pos, t, phase) -> dict:
        """Move the new tokens' slabs of the offloaded parts to their homes (async with overlap)."""
        rt = self.rt
        out = {}
        if not self.offloaded:
            return out
        after = rt.lanes.compute_ticket()
        for tier, r0, r1 in self.parts:
            if tier is Tier.GPU:
                continue
            slab = self.slab[tier]
            src = self._device_slabs(tier, j, k, slot, pos, t)
            if tier is Tier.CPU:
                dst = self.home[Tier.CPU][j, k, pos:pos + t]
                tk = rt.submit(R.D2H, _copy(dst, src), [after], phase,
                               C.CACHE_STORE, t * slab)
                self.written[(j, k, tier)] = [tk]
                out[tier] = {"host": [tk]}
                self.work_free[slot] = self.work_free[slot] + [tk]
            else:
                stage = self.bounce[slot][pos:pos + t]
                cp = rt.submit(R.D2H, _copy(stage, src),
                               [after] + self.bounce_free[slot], phase, C.CACHE_STORE, t * slab)
                off = self._disk_offset(j, k, pos)
                wr = rt.submit(R.DISK_WRITE, _write(self.file, off, stage.reshape(-1)), [cp], phase,
                               C.CACHE_STORE, t * slab)
                self.written[(j, k, tier)] = [wr]
                out[tier] = {"host": [cp]}
                self.work_free[slot] = self.work_free[slot] + [cp]
                self.bounce_free[slot] = [wr]
        return out

    def finish_item(self, slot: int) -> None:
        """After an item's compute: its work slot is free once that compute and its stores are done."""
        if self.offloaded:
            self.work_free[slot] = self.work_free[slot] + [self.rt.lanes.compute_ticket()]

    def _cpu_attention(self, q_rows: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        """q_rows (r, g, 1, d) on the device; kv (L, 2, r, d) in host memory -> (r, g, 1, d) on the device.

        The queries go to the host and the outputs come back (``attention_io``). The
        attention runs on the CPU in fp32, as ``simulator.cost`` assumes: PyTorch's CPU
        flash-attention kernel accumulates half-precision inputs in fp32, so the cache is
        read once in its stored dtype instead of being copied to an fp32 tensor first.
        """
        rt = self.rt
        r = q_rows.shape[0]
        q_host, o_host = self.q_host[:r], self.o_host[:r]
        with rt.region(C.ATTENTION_IO, "io:attention_io", R.D2H):
            q_host.copy_(q_rows)
        with rt.region(C.ATTENTION, "cpu_attention", R.CPU):
            o_host.copy_(layers.decode_attention_rows(q_host, kv[:, 0].transpose(0, 1),
                                                      kv[:, 1].transpose(0, 1)))  # (r, g, 1, d)
        with rt.region(C.ATTENTION_IO, "io:attention_io", R.H2D):
            o_dev = torch.empty(o_host.shape, dtype=rt.dtype, device=rt.device)
            o_dev.copy_(o_host)
        return o_dev


# ---------------------------------------------------------------------------- activations
class Activations:
    """Hidden states between layers, each GPU batch's sequences split over the tiers."""

    def __init__(self, rt: Runtime, plan: Plan):
        spec, policy = plan.spec, plan.policy
        self.rt, self.plan = rt, plan
        self.b, self.nb, self.h = policy.gpu_batch_size, policy.num_gpu_batches, spec.hidden_size
        self.s = plan.workload.prompt_len
        self.g, self.c, self.d = plan.act_rows
        e = torch.finfo(rt.dtype).bits // 8
        self.e = e
        self.gpu = [None] * self.nb
        per_seq = self.s * self.h * e
        if self.g:
            rt.tracked[Tier.GPU] += self.nb * self.g * per_seq
        self.cpu = rt.host_buffer(self.nb * self.c * per_seq).view(self.nb, -1) if self.c else None
        self.region = plan.act_disk_region()
        self.file = rt.open_disk("activations.bin", self.nb * self.region) if self.d else None
        self.bounce = [rt.host_buffer(self.region) for _ in range(2)] if self.d else []
        self.staging = [rt.host_buffer(self.region) for _ in range(2)] if self.d else []
        self.work = [rt.device_buffer(self.b * per_seq) for _ in range(2)] if self.c + self.d else []
        self.work_free = [[], []]
        self.bounce_free = [[], []]
        self.staging_free = [[], []]
        self.stored = [[] for _ in range(self.nb)]  # tickets of the last store of batch k
        self.stored_layer = [-1] * self.nb
        self._stage_turn = 0

    @property
    def resident(self) -> bool:
        return not (self.c or self.d)

    def _nbytes(self, rows: int, t: int) -> int:
        return rows * t * self.h * self.e

    def issue_load(self, k: int, slot: int, t: int, phase: str) -> list[Ticket]:
        if self.resident:
            return []
        rt, out = self.rt, []
        g, c, d = self.g, self.c, self.d
        work = self.work[slot]
        deps = self.work_free[slot] + self.stored[k]
        if c:
            n = self._nbytes(c, t)
            src, dst = self.cpu[k, :n], work[self._nbytes(g, t):self._nbytes(g + c, t)]
            out.append(rt.submit(R.H2D, _copy(dst, src), deps, phase, C.ACTIVATION_LOAD, n))
        if d:
            n = self._nbytes(d, t)
            bounce = self.bounce[slot][:round_up(n)]
            rd = rt.submit(R.DISK_READ, _read(self.file, k * self.region, bounce),
                           self.bounce_free[slot] + self.stored[k], phase, C.ACTIVATION_LOAD, round_up(n))
            dst = work[self._nbytes(g + c, t):self._nbytes(self.b, t)]
            cp = rt.submit(R.H2D, _copy(dst, bounce[:n]), deps + [rd], phase,
                           C.ACTIVATION_LOAD, n)
            self.bounce_free[slot] = [cp]
            out.append(cp)
        return out

    def input(self, k: int, slot: int, t: int) -> torch.Tensor:
        """Batch k's hidden states (b, t, h) on the device (loads already waited for)."""
        if self.resident:
            return self.gpu[k]
        rt = self.rt
        wait_all(self.work_free[slot])
        x = self.work[slot][:self._nbytes(self.b, t)].view(rt.dtype).view(self.b, t, self.h)
        if self.g:
            with rt.region(C.ACTIVATION_LOAD, "io:activation_gpu_rows"):
                x[:self.g].copy_(self.gpu[k])
        return x

    def store(self, k: int, y: torch.Tensor, layer: int, slot: int, phase: str) -> None:
        """Keep batch k's output y (b, t, h): GPU rows stay, CPU and disk rows move out."""
        self.stored_layer[k] = layer
        if self.resident:
            self.gpu[k] = y
            return
        rt = self.rt
        g, c, d = self.g, self.c, self.d
        t = y.shape[1]
        self.gpu[k] = y[:g] if g else None
        after = rt.lanes.compute_ticket()
        if rt.cuda and rt.lanes.overlap:
            y.record_stream(rt.lanes._streams[R.D2H])
        tickets = []
        if c:
            n = self._nbytes(c, t)
            dst = self.cpu[k, :n].view(rt.dtype).view(c, t, self.h)
            src = y[g:g + c]
            tickets.append(rt.submit(R.D2H, _copy(dst, src), [after], phase,
                                     C.ACTIVATION_STORE, n))
        if d:
            n = self._nbytes(d, t)
            i = self._stage_turn
            self._stage_turn ^= 1
            stage = self.staging[i][:round_up(n)]
            dst = stage[:n].view(rt.dtype).view(d, t, self.h)
            src = y[g + c:]
            cp = rt.submit(R.D2H, _copy(dst, src), [after] + self.staging_free[i], phase,
                           C.ACTIVATION_STORE, n)
            wr = rt.submit(R.DISK_WRITE, _write(self.file, k * self.region, stage), [cp], phase,
                           C.ACTIVATION_STORE, round_up(n))
            self.staging_free[i] = [wr]
            tickets.append(wr)
        self.stored[k] = tickets

    def finish_item(self, slot: int) -> None:
        if not self.resident:
            self.work_free[slot] = [self.rt.lanes.compute_ticket()]


# ---------------------------------------------------------------------------- the run
class Executor:
    """Runs one (model, workload, policy) case; see the module docstring.

    ``split_compute``: time GEMMs, attention and elementwise work separately (default on a
    CPU device, where regions are timed with perf_counter), or as one ``compute`` span per
    GPU batch (default on CUDA, where an event pair per kernel group would perturb the
    timeline). ``bounds_bytes_per_s``: optional rates {"h2d", "d2h", "disk_read",
    "disk_write", "hbm"} that achieved bandwidths are reported against.
    """

    def __init__(self, model: ModelSpec, workload: Workload, policy: Policy, device: str = "cpu",
                 offload_dir: str | None = None, seed: int = 0, checkpoint: str | None = None,
                 split_compute: bool | None = None, bounds_bytes_per_s: dict | None = None):
        self.spec, self.workload, self.policy = model, workload, policy
        self.plan = make_plan(model, workload, policy)
        ctx = workload.prompt_len + workload.gen_len
        if ctx > model.max_position_embeddings:
            raise PolicyError(f"--prompt-len + --gen-len = {ctx} exceeds {model.name}'s max_position_embeddings "
                              f"{model.max_position_embeddings}")
        self.device = resolve_device(device)
        self.offload_dir = offload_dir
        self.seed, self.checkpoint = seed, checkpoint
        self.split_compute = (self.device.type == "cpu") if split_compute is None else bool(split_compute)
        self.bounds = dict(bounds_bytes_per_s or {})
        self.counter = None  # set by opcount.measure_op_counts

    # ------------------------------------------------------------------ entry point
    def run(self, prompt_ids=None, force_tokens=None, return_logits: bool = False) -> RunResult:
        plan = self.plan
        N, s, n = plan.num_sequences, self.workload.prompt_len, self.workload.gen_len
        prompts = self._prompts(prompt_ids, N, s)
        self._want_logits = bool(return_logits)
        force = None
        if force_tokens is not None:
            force = torch.as_tensor(force_tokens, dtype=torch.long)
            if tuple(force.shape) != (N, n):
                raise PolicyError(f"force_tokens: expected shape ({N}, {n}), got {tuple(force.shape)}")
        disk_need = sum(plan.disk_bytes().values())
        with sigterm_as_exit():
            offload = OffloadDir(self.offload_dir, disk_need) if disk_need else None
            rt = None
            try:
                rt = Runtime(self.device, self.policy, self.split_compute, offload)
                if self.counter is not None:
                    rt.timers.counter = self.counter
                    self.counter.phase_of = lambda: rt.timers.phase
                if rt.cuda:
                    torch.cuda.reset_peak_memory_stats(self.device)
                with torch.no_grad(), (torch.cuda.device(self.device) if rt.cuda else contextlib.nullcontext()):
                    return self._run(rt, offload, prompts, force, return_logits)
            finally:
                if rt is not None:
                    rt.lanes.close()
                if offload is not None:
                    offload.remove()

    def _prompts(self, prompt_ids, N: int, s: int) -> torch.Tensor:
        if prompt_ids is None:
            g = torch.Generator().manual_seed(self.seed + 7919)
            return torch.randint(0, self.spec.vocab_size, (N, s), generator=g)
        p = torch.as_tensor(prompt_ids, dtype=torch.long)
        if tuple(p.shape) != (N, s):
            raise PolicyError(f"prompt_ids: expected shape ({N}, {s}) (num_sequences, prompt_len), "
                              f"got {tuple(p.shape)}")
        if p.min() < 0 or p.max() >= self.spec.vocab_size:
            raise PolicyError(f"prompt_ids: ids must lie in 0..{self.spec.vocab_size - 1}")
        return p

    def _run(self, rt: Runtime, offload, prompts, force, want_logits) -> RunResult:
        plan, spec, policy = self.plan, self.spec, self.policy
        source = weight_source(spec, self.seed, self.checkpoint)
        self.w = LayerWeights(rt, plan, source)
        self.head = HeadWeights(rt, plan, source, self.w.dq if self.w.compressed else None)
        if plan.lm_head.compressed and not self.w.compressed:
            V, h = spec.vocab_size, spec.hidden_size
            self.head.dq = rt.device_buffer(V * h * (torch.finfo(rt.dtype).bits // 8)).view(rt.dtype)
        self.experts = ExpertStore(rt, plan, source) if spec.is_moe else None
        self.cache = KVCache(rt, plan)
        self.act = Activations(rt, plan)
        self.cos, self.sin = (None, None) if spec.is_opt else \
            layers.rope_tables(spec, self.workload.prompt_len + self.workload.gen_len, rt.device, rt.dtype)
        self.rt = rt
        self._pending_units, self._pending_items = {}, {}
        N, n, B = plan.num_sequences, self.workload.gen_len, policy.block_size
        tokens = torch.zeros(N, n, dtype=torch.long)
        logits = torch.zeros(N, n, spec.vocab_size) if want_logits else None
        prefill_s, step_s = 0.0, [0.0] * max(n - 1, 0)
        for blk in range(plan.num_blocks):
            rows = slice(blk * B, (blk + 1) * B)
            ids = prompts[rows]
            for step in range(n):
                rt.timers.phase = Phase.PREFILL.value if step == 0 else Phase.DECODE.value
                t0 = self._clock()
                out, lg = self._step(blk, step, ids)
                tokens[rows, step] = out
                if logits is not None:
                    logits[rows, step] = lg
                nxt = force[rows, step] if force is not None else out
                ids = nxt.view(B, 1)
                if step == n - 1:
                    rt.lanes.drain()
                dt = self._clock() - t0
                if step == 0:
                    prefill_s += dt
                else:
                    step_s[step - 1] += dt
        if rt.cuda:
            torch.cuda.synchronize(rt.device)
        rt.timers.resolve()
        return self._result(rt, offload, tokens, logits, prefill_s, step_s)

    def _clock(self) -> float:
        if self.rt.cuda:
            torch.cuda.synchronize(self.rt.device)
        return time.perf_counter()

    # ------------------------------------------------------------------ one step of one block
    def _step(self, blk: int, step: int, ids: torch.Tensor):
        """Every layer for every GPU batch, then the head. ids (B, t) host. -> tokens (B,), logits."""
        spec, policy, rt = self.spec, self.policy, self.rt
        L, nb, b = spec.num_layers, policy.num_gpu_batches, policy.gpu_batch_size
        s = self.workload.prompt_len
        prefill = step == 0
        pos = 0 if prefill else s + step - 1
        t = ids.shape[1]
        phase = rt.timers.phase
        finals = [None] * nb
        for j in range(L):
            u = self._unit_index(blk, step, j)
            self._enter_unit(u)
            slot = self._layer_slot(u)
            w = self.w.tensors(j, slot)
            deps = self.w.slot_free[slot]
            for k in range(nb):
                i = self._item_index(blk, step, j, k)
                self._enter_item(i)
                islot = i % 2
                if j == 0:
                    x = self.head.embed_tokens(ids[k * b:(k + 1) * b], pos)  # (b, t, h)
                else:
                    x = self.act.input(k, islot, t)
                attend = self._attend_fn(j, k, islot, pos, prefill, phase)
                experts = self.experts.layer(u, j, slot, phase, deps) if self.experts else None
                with rt.timers.compute_span():
                    if spec.is_opt:
                        y = layers.opt_layer(spec, w, x, attend, rt.region)
                    else:
                        cos, sin = self.cos[pos:pos + t], self.sin[pos:pos + t]
                        y = layers.llama_layer(spec, w, x, attend, rt.region, cos, sin, experts=experts)
                if j < L - 1:
                    self.act.store(k, y, j, islot, phase)
                else:
                    finals[k] = y[:, -1]  # (b, h)
                self.cache.finish_item(islot)
                self.act.finish_item(islot)
            self.w.slot_free[slot] = [rt.lanes.compute_ticket()]
        # head: final norm, LM head, argmax for every batch
        self._enter_unit(self._unit_index(blk, step, L))
        W = self.head.lm_matrix()  # (V, h)
        toks, lgs = [], []
        for k in range(nb):
            with rt.timers.compute_span():
                with rt.region(C.ELEMENTWISE, "head"):
                    xf = layers.final_norm(spec, self.head.vectors, finals[k])  # (b, h)
                with rt.region(C.MATMUL, "head_matmul"):
                    lg = F.linear(xf, W)  # (b, V)
                with rt.region(C.ELEMENTWISE, "head"):
                    tok = lg.argmax(dim=-1)  # (b,)
            with rt.timers.label("io:tokens"):
                toks.append(tok.cpu())
                if self._want_logits:
                    lgs.append(lg.float().cpu())
        self.head.lm.free = [rt.lanes.compute_ticket()]
        return torch.cat(toks), (torch.cat(lgs) if lgs else None)

    def _attend_fn(self, j, k, slot, pos, prefill, phase):
        cache = self.cache

        def attend(q, k_new, v_new):
            return cache.attend(j, k, slot, pos, prefill, phase, q, k_new, v_new)

        return attend

    # ------------------------------------------------------------------ weight units
    # Units run in order: for each block, step: layers 0..L-1, then the head (j == L).
    def _unit_index(self, blk: int, step: int, j: int) -> int:
        return (blk * self.workload.gen_len + step) * (self.spec.num_layers + 1) + j

    def _unit_count(self) -> int:
        return self.plan.num_blocks * self.workload.gen_len * (self.spec.num_layers + 1)

    def _layer_slot(self, u: int) -> int:
        """Slot of a layer unit: layer units alternate between the two slots."""
        L = self.spec.num_layers
        return (u // (L + 1) * L + u % (L + 1)) % 2

    def _issue_unit(self, u: int) -> list[Ticket]:
        L, n = self.spec.num_layers, self.workload.gen_len
        j = u % (L + 1)
        phase = Phase.PREFILL.value if (u // (L + 1)) % n == 0 else Phase.DECODE.value
        if j == L:
            return self.head.lm.issue(phase)
        slot = self._layer_slot(u)
        out = self.w.issue(j, slot, phase)
        if self.experts is not None:
            out += self.experts.issue(u, j, slot, phase, self.w.slot_free[slot])
        return out

    def _enter_unit(self, u: int) -> None:
        tickets = self._pending_units.pop(u, None)
        if tickets is None:
            tickets = self._issue_unit(u)
        if self.policy.overlap and u + 1 < self._unit_count():
            self._pending_units[u + 1] = self._issue_unit(u + 1)
        wait_all(tickets)

    # ------------------------------------------------------------------ items (layer, GPU batch)
    def _item_index(self, blk, step, j, k) -> int:
        L, nb = self.spec.num_layers, self.policy.num_gpu_batches
        return ((blk * self.workload.gen_len + step) * L + j) * nb + k

    def _item_of(self, i: int):
        L, nb, n = self.spec.num_layers, self.policy.num_gpu_batches, self.workload.gen_len
        k = i % nb
        j = (i // nb) % L
        step = (i // (nb * L)) % n
        blk = i // (nb * L * n)
        return blk, step, j, k

    def _issue_item(self, i: int, what: str) -> list[Ticket]:
        blk, step, j, k = self._item_of(i)
        phase = Phase.PREFILL.value if step == 0 else Phase.DECODE.value
        pos = 0 if step == 0 else self.workload.prompt_len + step - 1
        if what == "cache":
            return self.cache.issue_load(j, k, i % 2, pos, phase)
        if j == 0:
            return []
        t = self.workload.prompt_len if step == 0 else 1
        return self.act.issue_load(k, i % 2, t, phase)

    def _enter_item(self, i: int) -> None:
        L, nb = self.spec.num_layers, self.policy.num_gpu_batches
        tickets = []
        for what in ("cache", "act"):
            pending = self._pending_items.pop((i, what), None)
            tickets += pending if pending is not None else self._issue_item(i, what)
        if self.policy.overlap and i + 1 < self._unit_count() // (L + 1) * L * nb:
            # Prefetch the next item's loads when what they read has already been stored:
            # the cache of the same (layer, batch) one step earlier (L x nb items back), the
            # activations of the same batch one layer earlier (nb items back).
            if L * nb > 1:
                self._pending_items[(i + 1, "cache")] = self._issue_item(i + 1, "cache")
            if nb > 1:
                self._pending_items[(i + 1, "act")] = self._issue_item(i + 1, "act")
        wait_all(tickets)

    # ------------------------------------------------------------------ result
    def _result(self, rt: Runtime, offload, tokens, logits, prefill_s, step_s) -> RunResult:
        plan, spec, policy, wl = self.plan, self.spec, self.policy, self.workload
        N, n = plan.num_sequences, wl.gen_len
        decode_s = float(sum(step_s))
        total = prefill_s + decode_s
        breakdown, component_s = [], {}
        for (phase, comp, res), sec in sorted(rt.timers.busy.items()):
            nbytes = rt.timers.bytes.get((phase, comp, res), 0)
            breakdown.append({"phase": phase, "component": comp, "resource": res, "time_s": sec, "bytes": nbytes})
            component_s.setdefault(phase, {}).setdefault(comp, 0.0)
            component_s[phase][comp] += sec
        if rt.cuda:
            gpu_peak = int(torch.cuda.max_memory_allocated(self.device))
            name = torch.cuda.get_device_name(self.device)
        else:
            gpu_peak = rt.tracked[Tier.GPU]
            name = "cpu (the gpu tier is host memory)"
            rt.notes.append("peak gpu memory on a CPU device counts the executor's buffers, not temporaries")
        disk_modes = {f.mode_used for f in offload.files} if offload else set()
        mode = None if not disk_modes else ("direct" if disk_modes == {"direct"} else "cached")
        realized = plan.realized()
        return RunResult(
            model=spec.name, device=name, torch_version=torch.__version__, policy=policy.to_dict(),
            workload={**wl.to_dict(), "num_sequences": N}, num_sequences=N, block_size=policy.block_size,
            num_blocks=plan.num_blocks, tokens=tokens.tolist(), prefill_s=prefill_s, decode_step_s=step_s,
            decode_s=decode_s, total_s=total, throughput_tok_s=N * n / total if total > 0 else math.inf,
            decode_throughput_tok_s=(N * (n - 1) / decode_s) if n > 1 and decode_s > 0 else None,
            component_s=component_s, breakdown=breakdown,
            peak_memory_bytes={Tier.GPU.value: gpu_peak, Tier.CPU.value: rt.tracked[Tier.CPU],
                               Tier.DISK.value: offload.bytes_allocated if offload else 0},
            placement={k: {"gpu_frac": p.gpu_frac, "cpu_frac": p.cpu_frac, "disk_frac": p.disk_frac}
                       for k, p in realized.items()},
            disk_io_mode_used=mode, compute_timing="split" if rt.timers.split_compute else "coarse",
            bandwidth=self._bandwidth(rt, step_s), notes=list(dict.fromkeys(rt.notes)), logits=logits,
            experts=self.experts.stats() if self.experts is not None else {},
        )

    def _bandwidth(self, rt: Runtime, step_s: list) -> dict:
        """gpt-fast style: bytes per decode step over the mean decode step, next to the bounds."""
        steps = len(step_s) * self.plan.num_blocks
        if not steps or not sum(step_s):
            return {}
        mean_step = sum(step_s) / len(step_s) / self.plan.num_blocks
        lanes = {}
        for lane in (R.H2D, R.D2H, R.DISK_READ, R.DISK_WRITE):
            nbytes = sum(v for (ph, _, res), v in rt.timers.bytes.items()
                         if ph == Phase.DECODE.value and res == lane.value) / steps
            row = {"bytes_per_step": nbytes, "achieved_bytes_per_s": nbytes / mean_step}
            bound = self.bounds.get(lane.value)
            if bound:
                row["bound_bytes_per_s"] = bound
                row["bound_frac"] = row["achieved_bytes_per_s"] / bound
            lanes[lane.value] = row
        out = {"mean_decode_step_s": mean_step, "lanes": lanes}
        # Device memory traffic of one decode step: every weight byte plus the K/V read.
        spec, wl, policy = self.spec, self.workload, self.policy
        fmt = "int4" if policy.compress_weights else policy.dtype
        kv = spec.kv_bytes_per_token(policy.dtype, compressed=policy.compress_cache)
        mean_ctx = wl.prompt_len + wl.gen_len / 2
        hbm_bytes = spec.weight_bytes(fmt) + self.plan.num_sequences / self.plan.num_blocks * mean_ctx * kv \
            * spec.num_layers
        hbm = {"bytes_per_step": hbm_bytes, "achieved_bytes_per_s": hbm_bytes / mean_step}
        if self.bounds.get("hbm"):
            hbm["bound_bytes_per_s"] = self.bounds["hbm"]
            hbm["bound_frac"] = hbm["achieved_bytes_per_s"] / self.bounds["hbm"]
        out["hbm"] = hbm
        return out


def run_policy(model: ModelSpec, workload: Workload, policy: Policy, device: str = "cpu",
               offload_dir: str | None = None, seed: int = 0, checkpoint: str | None = None, prompt_ids=None,
               force_tokens=None, return_logits: bool = False, split_compute: bool | None = None,
               bounds_bytes_per_s: dict | None = None) -> RunResult:
    """Generate ``workload.gen_len`` tokens greedily for every sequence under ``policy``.

    ``prompt_ids`` (num_sequences, prompt_len) default to seeded random ids;
    ``force_tokens`` (num_sequences, gen_len) feed these ids instead of the argmax (teacher
    forcing; ``tokens`` still holds the argmax); ``return_logits`` keeps every step's
    logits in ``RunResult.logits`` (N, gen_len, V) fp32.
    """
    ex = Executor(model, workload, policy, device, offload_dir, seed, checkpoint, split_compute, bounds_bytes_per_s)
    return ex.run(prompt_ids, force_tokens, return_logits)


def generate_logits(model: ModelSpec, workload: Workload, policy: Policy | None = None, **kw) -> torch.Tensor:
    """Every step's logits (num_sequences, gen_len, vocab) fp32 (the equivalence tests use it)."""
    policy = policy or Policy(dtype="fp32")
    return run_policy(model, workload, policy, return_logits=True, **kw).logits
