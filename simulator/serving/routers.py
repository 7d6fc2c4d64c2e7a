"""Routers: which replica an arriving request goes to, registered by name (a new router is a
class here or in a module that imports ``register_router``).

- ``round_robin``: replicas in turn.
- ``least_outstanding``: the replica with the fewest requests routed to it and not yet
  finished at the arrival time (ties: the lowest index).
Within a pipelined replica, the request goes to its virtual engine with the fewest
unfinished requests, as vLLM does (``simulator.serving.simulate``).
"""

from __future__ import annotations

from simulator.errors import PolicyError

ROUTERS: dict[str, type] = {}


def register_router(name: str):
    def deco(cls):
        cls.name = name
        ROUTERS[name] = cls
        return cls
    return deco


def get_router(name: str):
    key = str(name).strip().lower().replace("-", "_")
    if key not in ROUTERS:
        raise PolicyError(f"--router: unknown router {name!r} (known: {', '.join(sorted(ROUTERS))})")
    return ROUTERS[key]()


def least_loaded(servers, t: float):
    """The server (of ``servers``) with the fewest unfinished requests at time t."""
    return min(servers, key=lambda s: (s.outstanding(t), s.sid))


@register_router("round_robin")
class RoundRobin:
    def __init__(self):
        self.next = 0

    def pick(self, replicas: list, t: float) -> int:
        r = self.next % len(replicas)
        self.next += 1
        return r


@register_router("least_outstanding")
class LeastOutstanding:
    def pick(self, replicas: list, t: float) -> int:
        loads = [sum(s.outstanding(t) for s in group) for group in replicas]
        return loads.index(min(loads))
