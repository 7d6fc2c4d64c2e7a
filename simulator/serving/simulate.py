"""The discrete-event serving simulation: replicas behind a router, each running
iteration-level scheduling over a paged KV cache.

Events are arrivals and iteration ends, in time order (arrivals first at equal times, so
requests that arrive together are scheduled together). At every iteration end a server's
scheduler forms the next batch (``simulator.serving.schedulers``); the iteration's time is
``IterationCost.time_s`` of that batch (``simulator.serving.costs``); its effects (tokens,
first tokens, finishes, freed blocks) are applied at once and stamped with its end time.

Servers: a replica of ``tp x pp`` GPUs is ``pp`` servers ("virtual engines", vLLM's
pipeline-parallel scheduling): each has its own scheduler and ``1/pp`` of the replica's KV
blocks, and its batches take ``pp`` stage passes; with the other virtual engines' batches in
the other stages the pipeline stays full. A replica with pp = 1 is one server.

Async scheduling (``EngineConfig.async_scheduling``, vLLM's default since 0.14): the
scheduler forms a server's next batch while the current one runs, so the batch formed at an
iteration end only sees the requests that arrived before that iteration started; later
arrivals wait one more iteration (an idle server schedules an arrival at once).

Closed loop (``RequestStream.concurrency`` = C): requests 0..C-1 arrive at t = 0; each
finish sends the next request ``think_s`` later, until all have been sent.

Steady runs: when a batch is decode-only and its scheduler promises that nothing could
join it (``Batch.steady``), the iterations until the first of its requests finishes, the
next request arrives (in a closed loop with several servers: any other server's
iteration ends), or its next block would not fit, are the same batch with contexts one
longer each time; they are evaluated together (``IterationCost.decode_run_s``), which gives
the same times as one at a time.
"""

from __future__ import annotations

import heapq
import math
import time
from dataclasses import dataclass, field

import numpy as np

from simulator.errors import PolicyError, WorkloadError
from simulator.models import ModelSpec
from simulator.serving.costs import IterationCost, chunk_attention_work, default_dtype
from simulator.serving.engines import EngineConfig
from simulator.serving.kvcache import KVBudget, kv_budget
from simulator.serving.requests import RequestStream
from simulator.serving.routers import get_router, least_loaded
from simulator.serving.schedulers import get_scheduler
from simulator.serving.state import Requests, Server


class ServingInfeasible(PolicyError):
    """The replica cannot serve the stream at all (no KV room, or a request larger than the
    whole cache)."""


@dataclass
class SimulationResult:
    """Per-request arrays (``req``), the time series of every server's KV occupancy and
    queues, counts, and the setup. Units: s, tokens, blocks."""

    req: Requests
    stream: RequestStream
    engine: EngineConfig
    layout: tuple  # (tp, pp)
    replicas: int
    dtype: str
    kv: KVBudget
    blocks_per_server: int
    series: dict  # per batch (or steady run) end: time_s, server, used_blocks, running, waiting, duration_s, iterations
    preemption_times: np.ndarray
    simulated_iterations: int
    scheduled_batches: int
    prefill_tokens: int  # prompt tokens computed, recomputations included
    wall_s: float
    model: str = ""
    hardware: str = ""
    notes: list = field(default_factory=list)

    @property
    def gpus(self) -> int:
        return self.layout[0] * self.layout[1] * self.replicas


def check_stream(model: ModelSpec, stream: RequestStream) -> None:
    """Every request fits the model's context: prompt + output <= max_position_embeddings."""
    total = stream.prompt_tokens + stream.output_tokens
    bad = np.flatnonzero(total > model.max_position_embeddings)
    if len(bad):
        i = int(bad[0])
        raise WorkloadError(f"request {i} ({stream.source}): prompt {int(stream.prompt_tokens[i])} + output "
                            f"{int(stream.output_tokens[i])} tokens exceed {model.name}'s max_position_embeddings "
                            f"{model.max_position_embeddings}")


def replica_budget(model: ModelSpec, hw, engine: EngineConfig, tp: int, pp: int, dtype: str) -> KVBudget:
    return kv_budget(model, hw, dtype, tp, pp, engine.block_size, engine.gpu_memory_utilization,
                     engine.max_num_batched_tokens, engine.max_num_seqs,
                     engine.swap_space_bytes if engine.preemption == "swap" else 0.0, engine.weights_cpu_frac,
                     engine.num_gpu_blocks)


def simulate(model: ModelSpec, hw, stream: RequestStream, engine: EngineConfig, tp: int = 1, pp: int = 1,
             replicas: int = 1, router: str = "round_robin", steady_runs: bool = True) -> SimulationResult:
    """Serve ``stream`` on ``replicas`` replicas of ``tp x pp`` GPUs (module docstring).
    Raises WorkloadError / PolicyError for bad input, ServingInfeasible when a request can
    never run. ``steady_runs=False`` evaluates every iteration on its own (for tests: the
    results are the same)."""
    t_start = time.perf_counter()
    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1:
        raise PolicyError(f"--replicas must be a positive integer, got {replicas!r}")
    check_stream(model, stream)
    dtype = engine.dtype or default_dtype(model, hw)
    kv = replica_budget(model, hw, engine, tp, pp, dtype)
    if not kv.feasible:
        raise ServingInfeasible(f"infeasible: {model.name} on {hw.name} with tp={tp} pp={pp}: {kv.reason()}")
    per_server = kv.num_blocks // pp
    largest = int((stream.prompt_tokens + stream.output_tokens - 1).max())
    bs = engine.block_size
    if -(-largest // bs) > per_server:
        raise ServingInfeasible(
            f"infeasible: {model.name} on {hw.name} with tp={tp} pp={pp}: the KV cache holds {per_server * bs} "
            f"tokens per {'virtual engine' if pp > 1 else 'replica'} ({per_server} blocks of {bs}), a request of "
            f"{largest + 1} tokens needs {-(-largest // bs)} blocks")
    if not engine.chunked_prefill:
        p = int(stream.prompt_tokens.max())
        if p > engine.max_num_batched_tokens:
            raise PolicyError(f"--max-num-batched-tokens {engine.max_num_batched_tokens} is smaller than a prompt "
                              f"of {p} tokens; raise it or use --chunked-prefill")
    max_tokens = max(engine.max_num_batched_tokens, largest + 1)
    cost = IterationCost.build(model, hw, dtype, tp, pp, max_tokens=max_tokens, max_seqs=engine.max_num_seqs,
                               block_size=bs, weights_cpu_frac=engine.weights_cpu_frac,
                               overhead_s=engine.overhead_s, launch_s=engine.launch_s,
                               layer_kernels=engine.layer_kernels, custom_allreduce=engine.custom_allreduce,
                               attention_ops_per_request=engine.attention_ops_per_request,
                               mha_decode_read_share=engine.mha_decode_read_share,
                               host_ops=(engine.host_ops_per_iteration, engine.host_ops_per_request))
    sim = _Simulation(stream, engine, cost, replicas, pp, per_server, kv.swap_blocks // pp, router, steady_runs)
    sim.run()
    s = sim.series
    series = {"time_s": np.asarray(s[0], float), "server": np.asarray(s[1], np.int64),
              "used_blocks": np.asarray(s[2], np.int64), "running": np.asarray(s[3], np.int64),
              "waiting": np.asarray(s[4], np.int64), "duration_s": np.asarray(s[5], float),
              "iterations": np.asarray(s[6], np.int64)}
    return SimulationResult(req=sim.req, stream=stream, engine=engine, layout=(tp, pp), replicas=replicas,
                            dtype=dtype, kv=kv, blocks_per_server=per_server, series=series,
                            preemption_times=np.asarray(sim.preemption_times, float),
                            simulated_iterations=sim.iterations, scheduled_batches=sim.batches,
                            prefill_tokens=sim.prefill_tokens,
                            wall_s=time.perf_counter() - t_start, model=model.name, hardware=hw.name)


class _Simulation:
    def __init__(self, stream: RequestStream, engine: EngineConfig, cost: IterationCost, replicas: int, pp: int,
                 blocks: int, swap_blocks: int, router: str, steady_runs: bool = True):
        self.stream = stream
        self.steady_runs = steady_runs
        self.req = Requests(stream)
        self.cfg = engine
        self.cost = cost
        self.model = cost.model
        self.scheduler = get_scheduler(engine.scheduler)
        self.router = get_router(router)
        self.servers = [Server(r * pp + v, r, engine, blocks, swap_blocks) for r in range(replicas) for v in range(pp)]
        self.groups = [self.servers[r * pp:(r + 1) * pp] for r in range(replicas)]
        self.events: list = []  # (time, seq, server id): a server's next scheduling
        self.seq = 0
        self.closed = stream.closed_loop
        self.pending: list = []  # closed loop: (time, request id) arrivals not yet delivered
        self.next_open = 0  # open loop: index of the next arrival
        self.issued = 0
        self.iterations = 0
        self.batches = 0
        self.prefill_tokens = 0
        self.series = ([], [], [], [], [], [], [])
        self.preemption_times: list[float] = []

    # ------------------------------------------------------------------ arrivals
    def next_arrival_s(self) -> float:
        if self.closed:
            return self.pending[0][0] if self.pending else math.inf
        return float(self.req.arrival[self.next_open]) if self.next_open < self.req.n else math.inf

    def pop_arrival(self) -> int:
        if self.closed:
            return heapq.heappop(self.pending)[1]
        i = self.next_open
        self.next_open += 1
        return i

    def issue(self, t: float) -> None:
        """Closed loop: send the next request at time t."""
        if self.issued < self.req.n:
            self.req.arrival[self.issued] = t
            heapq.heappush(self.pending, (t, self.issued))
            self.issued += 1

    def deliver(self, i: int, t: float) -> None:
        group = self.groups[self.router.pick(self.groups, t)]
        s = least_loaded(group, t) if len(group) > 1 else group[0]
        if s.busy and self.cfg.async_scheduling:
            s.incoming.append((t, i))
        else:
            s.waiting.append(i)
        s.assigned += 1
        self.req.server[i] = s.sid
        if not s.busy:
            s.busy = True
            self.push(t, s)

    def push(self, t: float, s: Server) -> None:
        heapq.heappush(self.events, (t, self.seq, s.sid))
        self.seq += 1

    # ------------------------------------------------------------------ loop
    def run(self) -> None:
        if self.closed:
            for _ in range(min(self.stream.concurrency, self.req.n)):
                self.issue(0.0)
        while True:
            ta = self.next_arrival_s()
            ts = self.events[0][0] if self.events else math.inf
            if ta == math.inf and ts == math.inf:
                break
            if ta <= ts:
                self.deliver(self.pop_arrival(), ta)
            else:
                t, _, sid = heapq.heappop(self.events)
                self.iterate(self.servers[sid], t)
        unfinished = np.flatnonzero(np.isnan(self.req.finish))
        if len(unfinished):  # a scheduler that never runs a request: a defect, not bad input
            raise RuntimeError(f"serving simulation ended with {len(unfinished)} unfinished requests "
                               f"(first: {int(unfinished[0])})")

    def horizon_s(self) -> float:
        """Until when a steady run may extend: the next known arrival and, in a closed loop
        with several servers, the next iteration end of any other server (its finishes send
        new requests)."""
        h = self.next_arrival_s()
        if self.closed and len(self.servers) > 1 and self.events:
            h = min(h, self.events[0][0])
        return h

    def iterate(self, s: Server, t0: float) -> None:
        req, cost = self.req, self.cost
        inc = s.incoming
        while inc and inc[0][0] <= s.launched_s:
            s.waiting.append(inc.popleft()[1])
        batch = self.scheduler.schedule(s, req, t0)
        if batch.empty and inc:
            while inc:
                s.waiting.append(inc.popleft()[1])
            batch = self.scheduler.schedule(s, req, t0)
        if inc:
            batch.steady = False
        if batch.preempted:
            self.preemption_times.extend([t0] * len(batch.preempted))
        if batch.empty:
            s.busy = False
            return
        self.batches += 1
        dec = batch.decodes
        n = len(dec)
        ctx_sum = float((req.ctx[dec] + 1).sum()) if n else 0.0
        tokens, samples, flop, nbytes, keys = n, n, 0.0, 0.0, 0.0
        if batch.chunks:
            ids = np.fromiter((c[0] for c in batch.chunks), np.int64, len(batch.chunks))
            q = np.fromiter((c[1] for c in batch.chunks), np.int64, len(batch.chunks))
            flop, nbytes = chunk_attention_work(self.model, q, req.ctx[ids], cost.dtype, cost.tp,
                                                masked=cost.attention_ops is not None)
            keys = float((req.ctx[ids] + q).sum())
            tokens += int(q.sum())
            self.prefill_tokens += int(q.sum())
            samples += int((req.ctx[ids] + q == req.target[ids]).sum())
        steps = 1
        last = 0.0
        if batch.steady and n and self.steady_runs:
            steps, dt, last = self.steady_run(s, dec, ctx_sum, t0)
        else:
            dt = cost.time_s(tokens, samples, flop, nbytes, n, ctx_sum, batch.swap_out_blocks, batch.swap_in_blocks,
                             len(batch.chunks), keys)
        t1 = t0 + dt
        s.launched_s = t0 if steps == 1 else t1 - last
        self.iterations += steps
        done = s.complete(req, batch, t1, steps)
        if done and self.closed:
            for _ in done:
                self.issue(t1 + self.stream.think_s)
        sr = self.series
        sr[0].append(t1)
        sr[1].append(s.sid)
        sr[2].append(s.used_blocks)
        sr[3].append(len(s.running))
        sr[4].append(len(s.waiting) + len(s.swapped))
        sr[5].append(dt)
        sr[6].append(steps)
        self.push(t1, s)

    def steady_run(self, s: Server, dec: np.ndarray, ctx_sum: float, t0: float) -> tuple[int, float]:
        """(iterations, seconds) of the steady run that starts with this batch (module
        docstring); the scheduler allocated the first iteration's blocks."""
        req, cost = self.req, self.cost
        n = len(dec)
        k = int((req.output[dec] - req.generated[dec]).min())
        if k <= 1:
            t = float(cost.decode_run_s(n, ctx_sum, 1)[0])
            return 1, t, t
        times = cost.decode_run_s(n, ctx_sum, k)
        cum = np.cumsum(times)
        horizon = self.horizon_s() - t0
        if horizon < cum[-1]:
            k = min(k, int(np.searchsorted(cum, horizon, side="left")) + 1)
        if k > 1:
            bs = self.cfg.block_size
            base = req.ctx[dec] + 1 - req.shared[dec]
            held = req.blocks[dec]

            def need(j: int) -> int:
                return int((-(-(base + j) // bs) - held).sum())

            if need(k - 1) > s.free_blocks:
                lo, hi = 0, k - 1  # need(lo) <= free < need(hi)
                while hi - lo > 1:
                    mid = (lo + hi) // 2
                    if need(mid) <= s.free_blocks:
                        lo = mid
                    else:
                        hi = mid
                k = lo + 1
            extra = need(k - 1)
            req.blocks[dec] = held + (-(-(base + k - 1) // bs) - held)
            s.free_blocks -= extra
        return k, float(cum[k - 1]), float(times[k - 1])
