"""Concurrency and measurement: transfer lanes, completion tickets, busy-time timers.

A *lane* is one concurrent channel of the cost model (``simulator.vocabulary.Resource``):
``h2d`` and ``d2h`` (the host<->device link, one per direction), ``disk_read`` and
``disk_write``. Compute runs on the caller's thread (and, on CUDA, its current stream).

- ``overlap=False``: every task runs at once on the calling thread (CUDA: on the compute
  stream), so transfers and compute are serial.
- ``overlap=True``: each lane is one worker thread running its tasks in order. On CUDA the
  ``h2d``/``d2h`` workers issue their copies on their own CUDA streams and hand back an
  event; disk workers block on file I/O. On a CPU-only machine the workers' copies are host
  memcpys that run while the main thread computes.

A task waits for its ``deps`` (tickets of earlier tasks) before it runs; the compute side
waits with ``Ticket.wait_compute``. Every task's busy time (not its waiting) is booked to a
(phase, component, resource) cell of ``Timers``, with the bytes it moved.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import defaultdict
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterable

import torch

from simulator.vocabulary import Component, Resource

LANES = (Resource.H2D, Resource.D2H, Resource.DISK_READ, Resource.DISK_WRITE)
STREAM_LANES = (Resource.H2D, Resource.D2H)
COMPUTE_KEY = "compute"  # component key used when compute is timed as one piece (split_compute=False)


class Ticket:
    """Completion of one task: a host future whose result is a CUDA event (or None)."""

    __slots__ = ("future",)

    def __init__(self, future: Future | None = None, event=None):
        if future is None:
            future = Future()
            future.set_result(event)
        self.future = future

    def event(self):
        return self.future.result()  # re-raises the task's exception

    def wait_host(self) -> None:
        ev = self.event()
        if ev is not None:
            ev.synchronize()

    def wait_stream(self, stream) -> None:
        ev = self.event()
        if ev is not None and stream is not None:
            stream.wait_event(ev)

    def wait_compute(self) -> None:
        """Make the compute side wait: host-side completion, then the compute stream."""
        ev = self.event()
        if ev is not None:
            torch.cuda.current_stream().wait_event(ev)


def wait_all(tickets: Iterable[Ticket]) -> None:
    for t in tickets:
        t.wait_compute()


class Timers:
    """Busy seconds and bytes per (phase, component, resource); compute regions.

    ``region(component)`` times a piece of main-thread compute: perf_counter on a CPU
    device (work is synchronous), CUDA events on the compute stream otherwise, resolved
    by ``resolve()`` after a synchronize. With ``split_compute=False`` the regions only
    label operations (for op counting); ``compute_span`` then times whole GPU-batch
    computations under the ``compute`` key.
    """

    def __init__(self, cuda: bool, split_compute: bool):
        self.cuda = cuda
        self.split_compute = split_compute
        self.busy = defaultdict(float)
        self.bytes = defaultdict(int)
        self.phase = "prefill"
        self.counter = None  # an OpCounter while counting operations
        self._pending = []
        self._lock = threading.Lock()

    def add(self, phase: str, component: str, resource: str, seconds: float, nbytes: int = 0) -> None:
        with self._lock:
            self.busy[(phase, component, resource)] += seconds
            self.bytes[(phase, component, resource)] += nbytes

    def add_events(self, phase: str, component: str, resource: str, start, end, nbytes: int = 0) -> None:
        with self._lock:
            self._pending.append((phase, component, resource, start, end))
            self.bytes[(phase, component, resource)] += nbytes

    def resolve(self) -> None:
        """Turn recorded CUDA event pairs into seconds (call after a synchronize)."""
        with self._lock:
            pending, self._pending = self._pending, []
        for phase, comp, res, start, end in pending:
            self.add(phase, comp, res, start.elapsed_time(end) / 1e3)

    @contextlib.contextmanager
    def label(self, label: str):
        """Attribute the operations inside to ``label`` when counting (no timing)."""
        if self.counter is None:
            yield
            return
        previous = self.counter.push(label)
        try:
            yield
        finally:
            self.counter.pop(previous)

    def region(self, component: Component, label: str | None = None, resource: Resource = Resource.GPU):
        """Time main-thread compute as ``component`` on ``resource``; label ops for counting.
        A plain class, not a generator: a decode step enters ~25 regions per layer and GPU
        batch, and on a CPU device their own cost is untimed time the cost model cannot see."""
        return _Region(self, component, label, resource)

    @contextlib.contextmanager
    def compute_span(self):
        """With ``split_compute=False``: time all device compute inside under ``compute``."""
        if self.split_compute:
            yield
            return
        if self.cuda:
            start, end = _event(), _event()
            start.record()
            yield
            end.record()
            self.add_events(self.phase, COMPUTE_KEY, Resource.GPU.value, start, end)
        else:
            t0 = time.perf_counter()
            yield
            self.add(self.phase, COMPUTE_KEY, Resource.GPU.value, time.perf_counter() - t0)


class _Region:
    """``Timers.region``: perf_counter on a CPU device or for CPU work, CUDA events on the
    compute stream otherwise; only a label when compute is not split."""

    __slots__ = ("timers", "component", "resource", "label", "mode", "t0", "start", "previous")

    def __init__(self, timers: Timers, component: Component, label: str | None, resource: Resource):
        self.timers, self.component, self.resource = timers, component.value, resource.value
        self.label = label or self.component
        if not (timers.split_compute or resource is not Resource.GPU):
            self.mode = 0  # untimed
        elif timers.cuda and resource is not Resource.CPU:
            self.mode = 2  # CUDA events
        else:
            self.mode = 1  # wall clock

    def __enter__(self):
        counter = self.timers.counter
        if counter is not None:
            self.previous = counter.push(self.label)
        if self.mode == 1:
            self.t0 = time.perf_counter()
        elif self.mode == 2:
            self.start = _event()
            self.start.record()
        return self

    def __exit__(self, *exc) -> bool:
        t = self.timers
        if self.mode == 1:
            t.add(t.phase, self.component, self.resource, time.perf_counter() - self.t0)
        elif self.mode == 2:
            end = _event()
            end.record()
            t.add_events(t.phase, self.component, self.resource, self.start, end)
        if t.counter is not None:
            t.counter.pop(self.previous)
        return False


def _event():
    return torch.cuda.Event(enable_timing=True)


class Lanes:
    """The four transfer lanes; see the module docstring."""

    def __init__(self, device: torch.device, overlap: bool, timers: Timers):
        self.cuda = device.type == "cuda"
        self.overlap = overlap
        self.timers = timers
        self._pools = {}
        self._streams = {}
        if overlap:
            self._pools = {lane: ThreadPoolExecutor(1, thread_name_prefix=f"llmsim-{lane.value}") for lane in LANES}
            if self.cuda:
                self._streams = {lane: torch.cuda.Stream(device) for lane in STREAM_LANES}

    def compute_ticket(self) -> Ticket:
        """A ticket that completes when the compute issued so far has finished.

        Only CUDA with overlap needs an event: CPU compute is synchronous, and serial CUDA
        work is ordered on the one compute stream.
        """
        if not (self.cuda and self.overlap):
            return Ticket()
        ev = torch.cuda.Event()
        ev.record()
        return Ticket(event=ev)

    def submit(self, lane: Resource, fn: Callable[[], None], deps: Iterable[Ticket], phase: str,
               component: Component, nbytes: int) -> Ticket:
        deps = list(deps)
        task = self._task(lane, fn, deps, phase, component.value, nbytes)
        if not self.overlap:
            return Ticket(event=task())
        return Ticket(self._pools[lane].submit(task))

    def _task(self, lane: Resource, fn, deps: list[Ticket], phase: str, component: str, nbytes: int):
        timers = self.timers
        on_stream = self.cuda and lane in STREAM_LANES
        stream = self._streams.get(lane)

        def run():
            for d in deps:
                if on_stream:
                    d.wait_stream(stream or torch.cuda.current_stream())
                else:
                    d.wait_host()
            with timers.label(f"io:{component}"):
                if on_stream:
                    with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
                        start, end = _event(), _event()
                        start.record()
                        fn()
                        end.record()
                    timers.add_events(phase, component, lane.value, start, end, nbytes)
                    return end
                t0 = time.perf_counter()
                fn()
                timers.add(phase, component, lane.value, time.perf_counter() - t0, nbytes)
                return None

        return run

    def drain(self) -> None:
        """Wait until every lane is idle (all submitted tasks finished)."""
        for pool in self._pools.values():
            pool.submit(lambda: None).result()

    def close(self) -> None:
        for pool in self._pools.values():
            pool.shutdown(wait=True, cancel_futures=True)
        self._pools = {}
