"""The expert layer of Mixtral-style models: top-k routing, the experts' SwiGLU MLPs, and
the experts' weights wherever the placement put them (``simulator.moe`` is the cost model of
what this module does).

Routing (Mixtral, arXiv 2401.04088, section 2.1; as transformers' MixtralSparseMoeBlock):
router logits ``x W_g^T`` (m, E) for the m = b t tokens of a GPU batch; probabilities by a
softmax in fp32; each token's k largest, renormalised to sum to 1. The m k routed (token,
expert) pairs are grouped by expert (one gather of their hidden states); expert e's output
for its rows is ``w2(silu(w1 x) * w3 x)``, written in place; every row is scaled by its
routing weight and added into its token's row (one ``index_add``, experts in ascending
order, as transformers adds them). Only the experts some token routes to are computed.

Where the experts' weights are (``plan.ExpertRegion``, one per tier):

- GPU: used in place.
- CPU or disk, ``expert_offload="prefetch"``: the whole tier share is copied into one of the
  two weight slots with the layer's other streamed weights, ahead of the layer (one copy per
  tier, like ``engine.LayerWeights``).
- CPU or disk, ``"fetch"``: after a GPU batch's routing, each expert it needs that no earlier
  GPU batch of the block fetched into the slot for this layer is copied in (disk: read into a
  pinned bounce buffer first), one copy per expert and tier; the layer waits for them.
- CPU or disk, ``"cpu"`` (Fiddler): an expert with no tensor on the GPU is computed on the
  CPU from host memory (a disk expert is read into the bounce buffer after the routing): its
  tokens' hidden states go to the host and the outputs come back. An expert split between
  the GPU and another tier is fetched as with ``"fetch"``.

Shapes: ``x`` (m, h) hidden states after the post-attention norm; ``ids``/``weights`` (m, k).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from simulator.models import ModelSpec
from simulator.vocabulary import TIERS, Component, Resource, Tier
from validate.executor.lanes import wait_all
from validate.executor.storage import host_buffer, round_up

MM, EW = Component.MATMUL, Component.ELEMENTWISE
C, R = Component, Resource


# ---------------------------------------------------------------------------- the math
def route(spec: ModelSpec, gate: torch.Tensor, x: torch.Tensor, region):
    """x (m, h) -> (counts: tokens per expert (host list of E), rows (m k,) token of each
    routed pair grouped by expert, weights (m k,) their routing weights in x's dtype)."""
    E, k = spec.num_experts, spec.experts_per_token
    with region(MM, "router"):
        logits = F.linear(x, gate)  # (m, E)
    with region(EW, "routing"):
        probs = torch.softmax(logits, dim=-1, dtype=torch.float32)  # (m, E)
        top_w, top_i = torch.topk(probs, k, dim=-1)  # (m, k)
        top_w /= top_w.sum(dim=-1, keepdim=True)
        flat = top_i.view(-1)  # (m k,) expert of each (token, slot)
        order = torch.argsort(flat, stable=True)  # pairs grouped by expert, tokens ascending
        counts = torch.bincount(flat, minlength=E).tolist()  # the host learns which experts run
        rows = order // k  # (m k,) token of each grouped pair
        weights = top_w.view(-1)[order].to(x.dtype)  # (m k,)
    return counts, rows, weights


def expert_mlp(x: torch.Tensor, w1: torch.Tensor, w3: torch.Tensor, w2: torch.Tensor, region,
               out: torch.Tensor | None = None, resource: Resource = Resource.GPU) -> torch.Tensor:
    """SwiGLU expert: x (n, h) -> w2(silu(w1 x) * w3 x) (n, h), into ``out`` when given."""
    if resource is Resource.CPU:  # one region: the CPU's part of the cost model is its GEMMs
        with region(MM, "cpu_expert", Resource.CPU):
            g = F.silu(F.linear(x, w1), inplace=True)
            g *= F.linear(x, w3)
            return F.linear(g, w2)
    with region(MM):
        g = F.linear(x, w1)  # (n, f)
        u = F.linear(x, w3)  # (n, f)
    with region(EW, "expert"):
        g = F.silu(g, inplace=True)
        g *= u
    with region(MM):
        return F.linear(g, w2) if out is None else torch.mm(g, w2.t(), out=out)  # (n, h)


def moe_forward(spec: ModelSpec, gate: torch.Tensor, y: torch.Tensor, region, experts) -> torch.Tensor:
    """The expert layer: y (b, t, h) -> (b, t, h). ``experts``: ``prepare(hit)`` makes the
    experts ``hit`` computable (fetches what must be fetched), ``compute(e, x, out)`` runs
    expert e on x (n, h) into out (n, h) (``ResidentExperts``, ``LayerExperts``)."""
    b, t, h = y.shape
    x = y.reshape(b * t, h)  # (m, h)
    counts, rows, weights = route(spec, gate, x, region)
    hit = [e for e, n in enumerate(counts) if n]
    experts.prepare(hit)
    with region(EW, "expert_gather"):
        xs = x.index_select(0, rows)  # (m k, h): the routed pairs' hidden states, grouped by expert
        ys = torch.empty_like(xs)  # (m k, h)
    start = 0
    for e, n in enumerate(counts):
        if n:
            experts.compute(e, xs[start:start + n], ys[start:start + n])
            start += n
    with region(EW, "expert_combine"):
        ys *= weights[:, None]
        out = torch.zeros_like(x).index_add_(0, rows, ys)  # (m, h)
    return out.view(b, t, h)


def expert_names(e: int) -> tuple[str, str, str]:
    """Layer-relative names of expert e's w1, w3, w2 (Mixtral checkpoints)."""
    p = f"block_sparse_moe.experts.{e}."
    return p + "w1.weight", p + "w3.weight", p + "w2.weight"


ROUTER = "block_sparse_moe.gate.weight"


class ResidentExperts:
    """Every expert's weights in one dict of device tensors (a layer's ``w``: tensor-parallel
    shards, the serving executor, or an all-GPU layer)."""

    def __init__(self, w: dict, region):
        self.w, self.region = w, region

    def prepare(self, hit) -> None:
        pass

    def compute(self, e: int, x: torch.Tensor, out: torch.Tensor) -> None:
        w1, w3, w2 = (self.w[n] for n in expert_names(e))
        expert_mlp(x, w1, w3, w2, self.region, out)


# ---------------------------------------------------------------------------- the executor's store
class ExpertStore:
    """Every layer's routed experts by tier (``plan.ExpertRegion``), the two device slots the
    offloaded shares land in, and the pinned bounce buffers of the disk share (module
    docstring). ``rt`` is the executor's ``engine.Runtime``."""

    def __init__(self, rt, plan, source):
        from validate.executor.engine import _encode, _views
        from validate.executor.weights import layer_prefix

        spec, dtype = plan.spec, rt.dtype
        self.rt, self.plan, self.spec = rt, plan, spec
        self.mode = plan.policy.expert_offload
        reg = plan.experts
        self.reg = reg
        L, E = spec.num_layers, spec.num_experts
        self.n = {t: reg[t].nbytes for t in TIERS}
        g, c, d = self.n[Tier.GPU], self.n[Tier.CPU], self.n[Tier.DISK]
        self.gpu = rt.device_buffer(L * g)
        self.cpu = rt.host_buffer(L * c)
        self.file = rt.open_disk("experts.bin", L * d) if d else None
        gpu_units = reg[Tier.GPU].units
        off_units = [bool(reg[Tier.CPU].units[e].nbytes or reg[Tier.DISK].units[e].nbytes) for e in range(E)]
        # cpu mode: experts with no tensor on the GPU run on the CPU; the others are fetched.
        self.on_host = [self.mode == "cpu" and off and not gpu_units[e].nbytes for e, off in enumerate(off_units)]
        device_side = any(off and not host for off, host in zip(off_units, self.on_host))
        self.slots = [rt.device_buffer(c + d) for _ in range(2)] if device_side and c + d else []
        self.bounce = [rt.host_buffer(d) for _ in range(2)] if d else []
        for buf in self.slots + self.bounce:  # touched now: a first copy into fresh pages would also fault them in
            buf.zero_()
        staging = host_buffer(max(g, c, d), pinned=False)  # aligned: O_DIRECT writes the disk share from it
        for j in range(L):
            prefix = layer_prefix(spec, j)
            for tier, buf, base in ((Tier.GPU, self.gpu, j * g), (Tier.CPU, self.cpu, j * c), (Tier.DISK, None, 0)):
                region = reg[tier]
                if not region.nbytes:
                    continue
                dst = staging[:region.nbytes] if buf is None else buf[base:base + region.nbytes]
                if buf is None:
                    dst.zero_()
                for e, unit in enumerate(region.units):
                    lo = region.offsets[e]
                    for x in unit.layouts:
                        dst[lo + x.offset:lo + x.offset + x.nbytes].copy_(
                            _encode(source.get(prefix + x.name, x.shape), False, dtype))
                if buf is None:
                    self.file.write(j * d, dst)

        def views(buf, region):
            return [_views(buf[region.offsets[e]:region.offsets[e] + u.nbytes], u, dtype) if u.nbytes else {}
                    for e, u in enumerate(region.units)]

        gpu_views = [views(self.gpu[j * g:(j + 1) * g], reg[Tier.GPU]) for j in range(L)]
        slot_views = [[{**a, **b} for a, b in zip(views(sl[:c], reg[Tier.CPU]), views(sl[c:], reg[Tier.DISK]))]
                      for sl in self.slots] or [[{}] * E] * 2
        host_views = [views(self.cpu[j * c:(j + 1) * c], reg[Tier.CPU]) for j in range(L)]
        bounce_views = [views(bb, reg[Tier.DISK]) for bb in self.bounce] or [[{}] * E] * 2

        def triple(e: int, *parts) -> tuple | None:
            w = {k: v for p in parts for k, v in p.items()}
            return tuple(w[n] for n in expert_names(e)) if len(w) == 3 else None

        # (w1, w3, w2) of expert e of layer j computed from slot s: on the device, or on the host
        self.device_w = [[[triple(e, gpu_views[j][e], slot_views[s][e]) for e in range(E)] for s in range(2)]
                         for j in range(L)]
        self.host_w = [[[triple(e, host_views[j][e], bounce_views[s][e]) if self.on_host[e] else None
                         for e in range(E)] for s in range(2)] for j in range(L)]
        self.owner = [None, None]  # the weight unit whose experts each slot holds
        self.present = [set(), set()]  # experts of the owner already in the slot (or its bounce buffer)
        self.bounce_free = [[], []]
        # per phase: [layer x GPU batch passes, experts they computed, experts fetched after the routing]
        self.counts = {}

    def stats(self) -> dict:
        """What the routing did, per phase: mean experts computed per (layer, GPU batch) and,
        with ``fetch``/``cpu``, mean experts fetched per (layer, block pass) - the numbers
        ``simulator.moe.experts_touched`` predicts for uniform routing."""
        nb = self.plan.policy.num_gpu_batches
        out = {"expert_offload": self.mode, "per_phase": {}}
        for phase, (passes, computed, fetched) in self.counts.items():
            out["per_phase"][phase] = {"experts_per_gpu_batch": computed / passes,
                                       "experts_fetched_per_layer_block": fetched / (passes / nb)}
        return out

    # ------------------------------------------------------------------ transfers
    def _copy_in(self, j: int, s: int, e: int | None, phase: str, deps: list) -> list:
        """Submit the copies that bring expert e's offloaded shares of layer j (None: every
        expert's, one copy per tier) into slot s (cpu mode, host experts: the disk share
        into the bounce buffer only). Returns their tickets."""
        from validate.executor.engine import _copy, _read
        rt, reg, out = self.rt, self.reg, []
        c, d = self.n[Tier.CPU], self.n[Tier.DISK]
        host = e is not None and self.on_host[e]
        lo_c, hi_c = (0, c) if e is None else reg[Tier.CPU].span(e)
        lo_d, hi_d = (0, d) if e is None else reg[Tier.DISK].span(e)
        if hi_c > lo_c and not host:
            src, dst = self.cpu[j * c + lo_c:j * c + hi_c], self.slots[s][lo_c:hi_c]
            out.append(rt.submit(R.H2D, _copy(dst, src), deps, phase, C.WEIGHT_LOAD, hi_c - lo_c))
        if hi_d > lo_d:
            n = min(round_up(hi_d - lo_d), d - lo_d)
            bounce = self.bounce[s][lo_d:lo_d + n]
            rd = rt.submit(R.DISK_READ, _read(self.file, j * d + lo_d, bounce), self.bounce_free[s] + deps, phase,
                           C.WEIGHT_LOAD, n)
            if host:
                out.append(rd)
            else:
                cp = rt.submit(R.H2D, _copy(self.slots[s][c + lo_d:c + hi_d], bounce[:hi_d - lo_d]), deps + [rd],
                               phase, C.WEIGHT_LOAD, hi_d - lo_d)
                self.bounce_free[s] = [cp]
                out.append(cp)
        return out

    def issue(self, u: int, j: int, s: int, phase: str, deps: list) -> list:
        """With ``prefetch``: load every offloaded expert of layer j into slot s ahead of the
        layer (weight unit u). Otherwise nothing: the slot starts empty for unit u."""
        self.owner[s], self.present[s] = u, set()
        if self.mode != "prefetch" or not self.slots:
            return []
        self.present[s] = set(range(self.spec.num_experts))
        return self._copy_in(j, s, None, phase, deps)

    def layer(self, u: int, j: int, s: int, phase: str, deps: list) -> "LayerExperts":
        """The experts of layer j as weight unit u computes them from slot s."""
        if self.owner[s] != u:
            self.owner[s], self.present[s] = u, set()
        return LayerExperts(self, j, s, phase, deps)


class LayerExperts:
    """One layer's experts for one GPU batch (``moe_forward``'s ``experts``)."""

    def __init__(self, store: ExpertStore, j: int, s: int, phase: str, deps: list):
        self.store, self.j, self.s, self.phase, self.deps = store, j, s, phase, deps

    def prepare(self, hit) -> None:
        st, s = self.store, self.s
        tickets, fetched = [], 0
        for e in hit:
            if e in st.present[s]:
                continue
            st.present[s].add(e)
            copies = st._copy_in(self.j, s, e, self.phase, self.deps)
            fetched += bool(copies)
            tickets += copies
        c = st.counts.setdefault(self.phase, [0, 0, 0])
        c[0], c[1], c[2] = c[0] + 1, c[1] + len(hit), c[2] + fetched
        wait_all(tickets)  # the layer's compute needs them now (the host waits for each task)

    def compute(self, e: int, x: torch.Tensor, out: torch.Tensor) -> None:
        st, j, s = self.store, self.j, self.s
        rt = st.rt
        if st.on_host[e]:
            with rt.region(C.ACTIVATION_STORE, "io:expert_tokens", R.D2H):
                xh = x.to("cpu")
            yh = expert_mlp(xh, *st.host_w[j][s][e], rt.region, resource=Resource.CPU)
            with rt.region(C.ACTIVATION_LOAD, "io:expert_tokens", R.H2D):
                out.copy_(yh)
            return
        expert_mlp(x, *st.device_w[j][s][e], rt.region, out)
