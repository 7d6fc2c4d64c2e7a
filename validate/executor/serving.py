"""Continuous batching on the executor: a request stream replayed in real time.

The serving simulation's own scheduler (``simulator.serving.schedulers``) forms each
iteration's batch over the simulation's own request and server state
(``simulator.serving.state``); this module runs the batch on the executor's layers
(``validate.executor.layers``) and stamps its effects with the wall clock, so the two differ
only in where an iteration's time comes from.

One iteration (Orca's selective batching, OSDI'22 section 4.2): the tokens of every request
in the batch - prefill chunks and one token per decode - are concatenated, ``(1, T, h)``;
GEMMs and elementwise work run on all T at once; attention runs per request over its own
keys, which live in a paged cache of ``block_size``-token blocks (vLLM): per layer a pool
of ``num_blocks x block_size`` K and V slots, and per request a block table that follows the
scheduler's block counts. New K/V are written to their slots first, then each request
attends over its slots (a causal mask inside a chunk after ``c0`` cached tokens). The LM
head runs on the last token of each request that samples; tokens are greedy.

Arrivals are real: a request joins the queue once the wall clock since the start passes
its arrival time; with nothing to run the loop sleeps until the next arrival. Weights are
the executor's seeded random weights, resident on the device. Units: s, tokens.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from simulator.models import ModelSpec
from simulator.serving.engines import EngineConfig
from simulator.serving.requests import RequestStream
from simulator.serving.schedulers import get_scheduler
from simulator.serving.state import Requests, Server
from validate.executor import layers
from validate.executor.engine import DTYPES, resolve_device
from validate.executor.errors import ExecutorError
from validate.executor.weights import layer_prefix, weight_source

# Operator calls per request and layer that selective batching adds to the layer's
# elementwise work: gather its keys, gather its values, one attention (the causal mask of
# a chunk is built once per request and iteration). Counted by tests/test_serving_executor.py.
ATTENTION_OPS_PER_REQUEST = 3


@dataclass
class ServingRun:
    """Measured per-request times (arrays by request id, seconds since the start) and the
    iterations' wall times."""

    model: str
    device: str
    dtype: str
    threads: int
    engine: dict
    req: Requests
    iteration_s: list = field(default_factory=list)
    batch_tokens: list = field(default_factory=list)
    tokens: list = field(default_factory=list)  # generated ids per request
    wall_s: float = 0.0
    notes: list = field(default_factory=list)

    def per_request(self) -> dict:
        r = self.req
        out_n = r.output.astype(float)
        with np.errstate(invalid="ignore", divide="ignore"):
            tpot = np.where(out_n > 1, (r.finish - r.first_token) / (out_n - 1), np.nan)
        return {"arrival_s": r.arrival, "ttft_s": r.first_token - r.arrival, "tpot_s": tpot,
                "e2e_s": r.finish - r.arrival, "preemptions": r.preemptions}


class _Model:
    """Resident weights and the per-iteration forward pass of one mixed batch."""

    def __init__(self, spec: ModelSpec, device: torch.device, dtype: torch.dtype, seed: int):
        src = weight_source(spec, seed)
        self.spec, self.device, self.dtype = spec, device, dtype
        self.layers = [{t.name: src.get(layer_prefix(spec, j) + t.name, t.shape).to(device, dtype)
                        for t in spec.layer_tensors()} for j in range(spec.num_layers)]
        self.head = {t.name: src.get(t.name, t.shape).to(device, dtype) for t in spec.head_tensors()}
        emb = "model.decoder.embed_tokens.weight" if spec.is_opt else "model.embed_tokens.weight"
        self.embed = self.head[emb]
        self.lm = self.head[spec.lm_head_tensor().name]
        self.positions = self.head.get("model.decoder.embed_positions.weight")
        if not spec.is_opt:
            self.cos, self.sin = layers.rope_tables(spec, spec.max_position_embeddings, device, dtype)

    @staticmethod
    def region(component=None, label=None):
        """The layers' timing regions: not timed here (the iteration is)."""
        return contextlib.nullcontext()

    def forward(self, ids: torch.Tensor, pos: torch.Tensor, segments: list, pool: "_Pool") -> torch.Tensor:
        """ids, pos (T,) -> hidden states of the T tokens (1, T, h) after the last layer.
        ``segments``: (offset, length, c0, slots) per request, slots (c0 + length,)."""
        spec = self.spec
        x = self.embed[ids]  # (T, h)
        if self.positions is not None:
            x = x + self.positions[pos + 2]  # OPT's learned positions, offset by 2 rows
        x = x.unsqueeze(0)  # (1, T, h)
        new_slots = torch.cat([s[3][s[2]:] for s in segments])  # (T,)
        masks = [None if n == 1 else
                 torch.arange(c0 + n, device=self.device)[None, :] <= (c0 + torch.arange(n, device=self.device))[:, None]
                 for _, n, c0, _ in segments]
        for j, w in enumerate(self.layers):
            def attend(q, k, v, j=j):
                return pool.attend(j, q, k, v, new_slots, segments, masks)
            if spec.is_opt:
                x = layers.opt_layer(spec, w, x, attend, self.region)
            else:
                x = layers.llama_layer(spec, w, x, attend, self.region, self.cos[pos], self.sin[pos])
        return x

    def sample(self, x: torch.Tensor, rows: list[int]) -> list[int]:
        """Greedy tokens of the given rows of x (1, T, h)."""
        h = layers.final_norm(self.spec, self.head, x[0, rows])  # (n, h)
        return torch.argmax(F.linear(h, self.lm), dim=-1).tolist()


class _Pool:
    """Per layer, K and V slots ``(num_blocks x block_size, kv_heads, head_dim)``."""

    def __init__(self, spec: ModelSpec, num_blocks: int, block_size: int, device, dtype):
        shape = (num_blocks * block_size, spec.num_kv_heads, spec.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(spec.num_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(spec.num_layers)]
        self.gqa = spec.num_heads != spec.num_kv_heads

    def attend(self, j, q, k, v, new_slots, segments, masks) -> torch.Tensor:
        """q (1, T, nh, d), k/v (1, T, nkv, d) -> (1, T, nh d): write the new K/V, then
        attention per request over its slots."""
        _, T, nh, d = q.shape
        self.k[j][new_slots] = k[0]
        self.v[j][new_slots] = v[0]
        out = []
        for (off, n, _c0, slots), mask in zip(segments, masks):
            ks = self.k[j].index_select(0, slots).transpose(0, 1).unsqueeze(0)  # (1, nkv, L, d): a row copy
            vs = self.v[j].index_select(0, slots).transpose(0, 1).unsqueeze(0)
            qs = q[0, off:off + n].transpose(0, 1).unsqueeze(0)  # (1, nh, n, d)
            o = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask, enable_gqa=self.gqa)
            out.append(o[0].transpose(0, 1).reshape(n, nh * d))
        return torch.cat(out).unsqueeze(0)


def run_stream(model: ModelSpec, stream: RequestStream, engine: EngineConfig, num_blocks: int, device: str = "cpu",
               dtype: str = "fp32", seed: int = 0, time_scale: float = 1.0, progress=None) -> ServingRun:
    """Serve ``stream`` on the executor (module docstring). ``num_blocks``: KV blocks of the
    pool; ``time_scale`` stretches the arrival times (1: as given)."""
    if stream.closed_loop:
        raise ExecutorError("the executor replays open-loop streams (arrival times); got a closed loop")
    if engine.prefix_caching or engine.preemption == "swap":
        raise ExecutorError("the executor's continuous batching has neither prefix caching nor KV swapping")
    dev = resolve_device(device)
    tdtype = DTYPES[dtype]
    cfg = engine
    req = Requests(stream)
    req.arrival = req.arrival * time_scale
    server = Server(0, 0, cfg, num_blocks, 0)
    scheduler = get_scheduler(cfg.scheduler)
    bs = cfg.block_size
    largest = int((req.prompt + req.output - 1).max())
    if -(-largest // bs) > num_blocks:
        raise ExecutorError(f"a request of {largest + 1} tokens needs {-(-largest // bs)} blocks; the pool has "
                            f"{num_blocks}")
    if largest + 1 > model.max_position_embeddings:
        raise ExecutorError(f"a request of {largest + 1} tokens exceeds {model.name}'s context")
    with torch.inference_mode():
        m = _Model(model, dev, tdtype, seed)
        pool = _Pool(model, num_blocks, bs, dev, tdtype)
        g = torch.Generator().manual_seed(seed + 7919)
        seqs = [torch.randint(0, model.vocab_size, (int(p),), generator=g).tolist() for p in req.prompt]
        free = list(range(num_blocks - 1, -1, -1))
        tables: list[list[int]] = [[] for _ in range(req.n)]
        run = ServingRun(model=model.name, device=str(dev), dtype=dtype, threads=torch.get_num_threads(),
                         engine=cfg.to_dict(), req=req)
        _warm_up(m, pool, model)
        nxt = 0
        t_start = time.perf_counter()
        while np.isnan(req.finish).any():
            now = time.perf_counter() - t_start
            while nxt < req.n and req.arrival[nxt] <= now:
                server.waiting.append(nxt)
                server.assigned += 1
                req.server[nxt] = 0
                nxt += 1
            batch = scheduler.schedule(server, req, now)
            if batch.empty:
                if nxt >= req.n:
                    raise ExecutorError("the scheduler stopped with requests unfinished")
                time.sleep(max(0.0, req.arrival[nxt] - (time.perf_counter() - t_start)))
                continue
            for i in set(batch.preempted):  # recompute: its blocks go back
                free.extend(tables[i])
                tables[i] = []
            units = [(int(i), 1, True) for i in batch.decodes] + [(int(i), int(q), False) for i, q in batch.chunks]
            ids, pos, segments, rows, samplers = _batch_inputs(units, req, seqs, tables, free, bs, dev)
            x = m.forward(ids, pos, segments, pool)
            new_tokens = m.sample(x, rows)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            t1 = time.perf_counter() - t_start
            done = server.complete(req, batch, t1)
            for i, tok in zip(samplers, new_tokens):
                if len(seqs[i]) < req.prompt[i] + req.generated[i]:
                    seqs[i].append(tok)
            for i in done:
                free.extend(tables[i])
                tables[i] = []
            run.iteration_s.append(t1 - now)
            run.batch_tokens.append(len(ids))
            if progress:
                progress(int(np.isfinite(req.finish).sum()), req.n)
        run.wall_s = time.perf_counter() - t_start
        run.tokens = [s[int(p):] for s, p in zip(seqs, req.prompt)]
    return run


def _batch_inputs(units, req: Requests, seqs: list, tables: list, free: list, bs: int, dev):
    """One iteration's inputs from its ``units`` (request, new tokens, decoding): each
    request's block table grown or shrunk to the scheduler's block count, its slots
    ``(c0 + n,)``, its tokens and positions concatenated; the rows and requests that sample.
    Its torch operations (``HOST_OPS_PER_REQUEST`` per request, ``HOST_OPS_PER_ITERATION``)
    are the executor engine's host work per iteration."""
    ids, pos, segments, rows, samplers = [], [], [], [], []
    off = 0
    for i, n, decoding in units:
        while len(tables[i]) < req.blocks[i]:
            tables[i].append(free.pop())
        while len(tables[i]) > req.blocks[i]:
            free.append(tables[i].pop())
        c0 = int(req.ctx[i])
        ids += seqs[i][c0:c0 + n]
        pos += range(c0, c0 + n)
        L = c0 + n
        blocks_t = torch.tensor(tables[i], dtype=torch.long)
        slots = (blocks_t[:, None] * bs + torch.arange(bs)).reshape(-1)[:L].to(dev)
        segments.append((off, n, c0, slots))
        if decoding or c0 + n == int(req.target[i]):  # decodes sample; a chunk at its target too
            rows.append(off + n - 1)
            samplers.append(i)
        off += n
    return torch.tensor(ids, device=dev), torch.tensor(pos, device=dev), segments, rows, samplers


def _warm_up(m: _Model, pool: _Pool, spec: ModelSpec) -> None:
    """One tiny batch through every layer: the first calls of a process pay one-time costs."""
    slots = torch.arange(2, device=m.device)
    x = m.forward(torch.zeros(2, dtype=torch.long, device=m.device), torch.arange(2, device=m.device),
                  [(0, 2, 0, slots)], pool)
    m.sample(x, [1])


__all__ = ["ATTENTION_OPS_PER_REQUEST", "ServingRun", "run_stream"]
