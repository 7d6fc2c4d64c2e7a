"""The scheduler interface and registry (see the package docstring), and the block moves
every scheduler shares: allocation, preemption by recompute or swap, admission."""

from __future__ import annotations

import numpy as np

from simulator.errors import PolicyError
from simulator.serving.state import Batch, Requests, Server

SCHEDULERS: dict[str, type] = {}
EMPTY = np.zeros(0, np.int64)


def register_scheduler(name: str):
    """Class decorator: register a ``Scheduler`` subclass under ``name``."""
    def deco(cls):
        if name in SCHEDULERS:
            raise ValueError(f"scheduler {name!r} registered twice")
        cls.name = name
        SCHEDULERS[name] = cls
        return cls
    return deco


def get_scheduler(name: str) -> "Scheduler":
    if name not in SCHEDULERS:
        raise PolicyError(f"--scheduler: unknown scheduler {name!r} (known: {', '.join(sorted(SCHEDULERS))})")
    return SCHEDULERS[name]()


class Scheduler:
    """Forms each iteration's batch for one server (``schedule``)."""

    name = "base"

    def schedule(self, server: Server, req: Requests, now: float) -> Batch:
        raise NotImplementedError

    # ------------------------------------------------------------------ shared moves
    @staticmethod
    def blocks_needed(req: Requests, ids, tokens, block_size: int):
        """Blocks ids must hold for ``tokens`` tokens of context: ceil((tokens - shared) /
        block_size)."""
        return -(-(np.asarray(tokens) - req.shared[ids]) // block_size)

    @staticmethod
    def preempt(server: Server, req: Requests, victim: int, batch: Batch) -> None:
        """Take ``victim`` out of the running set (vLLM, SOSP'23, section 4.5): swap its
        blocks to CPU memory when the engine swaps and they fit there, else free them and
        send it back to the front of the queue to be recomputed (its prefill target becomes
        its prompt and the tokens it already generated)."""
        if server.running[-1] == victim:
            server.running.pop()
        else:
            server.running.remove(victim)
        if victim in server.prefilling:
            server.prefilling.remove(victim)
        b = int(req.blocks[victim])
        if server.config.preemption == "swap" and req.prefilled[victim] and 0 < b <= server.swap_free:
            server.swap_free -= b
            server.free_blocks += b
            batch.swap_out_blocks += b
            server.swapped.appendleft(victim)
        else:
            server.free_blocks += b
            req.blocks[victim] = 0
            req.ctx[victim] = 0
            req.shared[victim] = 0
            req.prefilled[victim] = False
            req.target[victim] = req.prompt[victim] + req.generated[victim]
            server.waiting.appendleft(victim)
        req.preemptions[victim] += 1
        batch.preempted.append(victim)
        server.changed()

    @staticmethod
    def prefix_hit(server: Server, req: Requests, i: int) -> int:
        """Tokens of request i's prefill served by the prefix cache: its group's cached full
        blocks, leaving at least its last prompt token to compute (vLLM's automatic prefix
        caching hits whole blocks only)."""
        if not server.config.prefix_caching or req.group[i] < 0:
            return 0
        cached = server.cached_groups.get(int(req.group[i]), 0)
        bs = server.config.block_size
        return min(cached, (int(req.target[i]) - 1) // bs * bs)
