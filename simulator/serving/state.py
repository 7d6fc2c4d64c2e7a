"""The entities a serving simulation moves: requests (arrays indexed by request id) and the
servers that run them (one per replica, or per virtual engine of a pipelined replica).

A request's life: it arrives, waits in its server's queue, is admitted (its prefill target
is its prompt, or its prompt and the tokens it already generated after a preemption by
recompute), is prefilled (whole or in chunks), samples its first token when the prefill
reaches the target, then decodes one token per iteration until it has ``output`` tokens.
During decoding ``ctx = prompt + generated - 1``: the newest token's K/V is written by the
next decode. ``shared`` tokens of its context are held by the prefix cache, not by it; it
holds ``ceil((ctx - shared) / block_size)`` blocks.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np


class Requests:
    """Per-request state, arrays of length N (the stream's order)."""

    def __init__(self, stream):
        n = stream.num_requests
        self.n = n
        self.prompt = np.asarray(stream.prompt_tokens, np.int64).copy()
        self.output = np.asarray(stream.output_tokens, np.int64).copy()
        self.prefix = np.asarray(stream.prefix_tokens, np.int64).copy()
        self.group = np.asarray(stream.prefix_group, np.int64).copy()
        self.arrival = np.asarray(stream.arrival_s, float).copy()
        self.ctx = np.zeros(n, np.int64)  # tokens whose K/V is in the cache
        self.generated = np.zeros(n, np.int64)
        self.target = self.prompt.copy()  # prefill target of the current admission
        self.shared = np.zeros(n, np.int64)  # context tokens held by the prefix cache
        self.blocks = np.zeros(n, np.int64)  # blocks the request holds (GPU or, when swapped, CPU)
        self.prefilled = np.zeros(n, bool)
        self.first_token = np.full(n, np.nan)
        self.finish = np.full(n, np.nan)
        self.first_scheduled = np.full(n, np.nan)
        self.preemptions = np.zeros(n, np.int64)
        self.server = np.full(n, -1, np.int64)


@dataclass
class Batch:
    """What one iteration runs: decode ids (one token each, context ``ctx + 1``), prefill
    chunks (id, new tokens; they start at ``ctx``), and the KV moves it waits for.
    ``steady``: decode-only and nothing could join it before a request finishes or
    arrives (the scheduler's promise that repeating it is what it would choose)."""

    decodes: np.ndarray
    chunks: list = field(default_factory=list)
    preempted: list = field(default_factory=list)
    swap_out_blocks: int = 0
    swap_in_blocks: int = 0
    steady: bool = False

    @property
    def empty(self) -> bool:
        return len(self.decodes) == 0 and not self.chunks


class Server:
    """One scheduler's view: its queues, its KV block pool, its swap space."""

    def __init__(self, sid: int, replica: int, config, num_blocks: int, swap_blocks: int):
        self.sid = sid
        self.replica = replica
        self.config = config
        self.running: list[int] = []  # admission order
        self.prefilling: list[int] = []  # running requests whose prefill is not done
        self.waiting: deque[int] = deque()
        self.swapped: deque[int] = deque()
        self.total_blocks = num_blocks
        self.free_blocks = num_blocks
        self.swap_total = swap_blocks
        self.swap_free = swap_blocks
        self.cached_groups: dict[int, int] = {}  # prefix group -> tokens its cached blocks hold
        self.assigned = 0
        self.finish_times: list[float] = []  # non-decreasing
        self.busy = False
        self.incoming: deque = deque()  # async scheduling: (time, id) delivered while a batch was in flight
        self.launched_s = 0.0  # start of the iteration in flight
        self._decodes: np.ndarray | None = None

    def changed(self) -> None:
        """The running set changed: rebuild the decode ids on next use."""
        self._decodes = None

    def decode_ids(self, req: Requests) -> np.ndarray:
        if self._decodes is None:
            run = np.asarray(self.running, np.int64)
            self._decodes = run[req.prefilled[run]] if len(run) else run
        return self._decodes

    def outstanding(self, t: float) -> int:
        """Requests routed here that have not finished by time t."""
        import bisect
        return self.assigned - bisect.bisect_right(self.finish_times, t)

    @property
    def used_blocks(self) -> int:
        return self.total_blocks - self.free_blocks

    def complete(self, req: Requests, batch: Batch, t_end: float, steps: int = 1) -> list[int]:
        """Apply the effects of ``batch`` run ``steps`` times (steps > 1: a steady decode run
        whose blocks the caller allocated), ending at ``t_end``: decodes write their token's
        K/V and sample the next; chunks extend their prefill, and one that reaches its target
        samples the request's first token (of this admission); finished requests free their
        blocks and leave. Returns the ids that finished."""
        done: list[int] = []
        dec = batch.decodes
        if len(dec):
            req.ctx[dec] += steps
            req.generated[dec] += steps
            done.extend(dec[req.generated[dec] >= req.output[dec]].tolist())
        for i, q in batch.chunks:
            req.ctx[i] += q
            if req.ctx[i] == req.target[i]:
                req.prefilled[i] = True
                self.prefilling.remove(i)
                req.generated[i] += 1
                if np.isnan(req.first_token[i]):
                    req.first_token[i] = t_end
                self.cache_prefix(req, i)
                if req.generated[i] >= req.output[i]:
                    done.append(i)
                self.changed()
        if done:
            gone = set(done)
            self.running = [x for x in self.running if x not in gone]
            for i in done:
                req.finish[i] = t_end
                self.free_blocks += int(req.blocks[i])
                req.blocks[i] = 0
            self.finish_times.extend([t_end] * len(done))
            self.changed()
        return done

    def cache_prefix(self, req: Requests, i: int) -> None:
        """After request i's prefill: with prefix caching, its group's full prefix blocks
        stay in the cache for the group's later requests (held for the rest of the run; the
        cache evicts nothing)."""
        g = int(req.group[i])
        if not self.config.prefix_caching or g < 0 or g in self.cached_groups:
            return
        bs = self.config.block_size
        cached = int(req.prefix[i]) // bs * bs
        if cached == 0 or req.shared[i] > 0:
            return
        self.cached_groups[g] = cached
        req.shared[i] = cached
        req.blocks[i] -= cached // bs  # those blocks now belong to the cache
