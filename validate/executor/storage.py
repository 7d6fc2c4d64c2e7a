"""Host buffers and the disk tier: aligned (pinned) buffers, the offload directory, files.

The disk tier is a set of files in a private subdirectory of the offload directory, made
for one run and removed when it ends (normally, on an exception, on Ctrl-C, or on SIGTERM,
which ``sigterm_as_exit`` turns into ``SystemExit``). Every region the executor reads or
writes starts at a multiple of ``ALIGN`` and spans whole multiples of it, from buffers
whose address is ``ALIGN``-aligned, so the same layout works with O_DIRECT
(``disk_io="direct"``: the disk's own rate) and buffered I/O (``"cached"``: the page cache).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import tempfile
import threading

import torch

from simulator.units import format_bytes
from validate.executor.errors import ExecutorError, OffloadSpaceError

ALIGN = 4096  # O_DIRECT needs offsets, lengths and addresses aligned to the logical block size


def round_up(n: int, align: int = ALIGN) -> int:
    return -(-int(n) // align) * align


def host_buffer(nbytes: int, pinned: bool, align: int = ALIGN) -> torch.Tensor:
    """A 1-D uint8 host tensor of ``nbytes`` whose first byte is ``align``-aligned."""
    raw = torch.empty(max(int(nbytes), 0) + align, dtype=torch.uint8, pin_memory=pinned)
    skip = (-raw.data_ptr()) % align
    return raw[skip:skip + int(nbytes)]


class OffloadDir:
    """A private directory for one run's disk tier; ``remove()`` deletes it and its files."""

    def __init__(self, parent: str | os.PathLike | None, need_bytes: int):
        parent = os.fspath(parent) if parent is not None else tempfile.gettempdir()
        if not os.path.isdir(parent):
            raise ExecutorError(f"offload dir {parent}: not a directory")
        free = shutil.disk_usage(parent).free
        if need_bytes > free:
            raise OffloadSpaceError(
                f"offload dir {parent}: the policy puts {need_bytes} bytes ({format_bytes(need_bytes)}) on disk "
                f"but only {free} bytes ({format_bytes(free)}) are free")
        self.parent = parent
        self.need_bytes = need_bytes
        self.path = tempfile.mkdtemp(prefix="llmsim-offload-", dir=parent)
        self.files: list[DiskFile] = []

    def open(self, name: str, size: int, mode: str, notes: list[str]) -> "DiskFile":
        f = DiskFile(os.path.join(self.path, name), size, mode, notes)
        self.files.append(f)
        return f

    @property
    def bytes_allocated(self) -> int:
        return sum(f.size for f in self.files)

    def remove(self) -> None:
        for f in self.files:
            f.close()
        self.files = []
        shutil.rmtree(self.path, ignore_errors=True)


class DiskFile:
    """One file of aligned regions, read and written whole from aligned host buffers.

    ``mode`` is what was asked; ``mode_used`` what happened: "direct" falls back to
    "cached" (with a note) when the filesystem refuses O_DIRECT.
    """

    def __init__(self, path: str, size: int, mode: str, notes: list[str]):
        self.path = path
        self.size = round_up(size)
        self.mode_used = "cached"
        self.fd = -1
        self._rows_fd = -1
        if mode == "direct":
            self.fd = self._open_direct(notes)
        if self.fd < 0:
            self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            os.posix_fallocate(self.fd, 0, self.size)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise OffloadSpaceError(f"offload dir {os.path.dirname(path)}: no room for {self.size} bytes "
                                        f"({format_bytes(self.size)}) in {os.path.basename(path)}") from None
            os.ftruncate(self.fd, self.size)

    def _open_direct(self, notes: list[str]) -> int:
        flag = getattr(os, "O_DIRECT", 0)
        reason = "this platform has no O_DIRECT"
        if flag:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | flag, 0o600)
            except OSError as e:
                reason = f"open with O_DIRECT failed: {e.strerror}"
            else:
                probe = host_buffer(ALIGN, pinned=False)
                try:
                    os.ftruncate(fd, ALIGN)
                    os.pwritev(fd, [memoryview(probe.numpy())], 0)
                    os.preadv(fd, [memoryview(probe.numpy())], 0)
                    self.mode_used = "direct"
                    return fd
                except OSError as e:
                    os.close(fd)
                    reason = f"O_DIRECT I/O failed: {e.strerror}"
        notes.append(f"disk_io: O_DIRECT unavailable for {os.path.dirname(self.path)} ({reason}); "
                     "disk reads and writes went through the page cache")
        return -1

    def write(self, offset: int, buf: torch.Tensor) -> None:
        """Write the uint8 host tensor ``buf`` at ``offset`` (both aligned in direct mode)."""
        view = memoryview(buf.numpy())
        done = 0
        while done < len(view):
            done += os.pwritev(self.fd, [view[done:]], offset + done)

    def read(self, offset: int, buf: torch.Tensor) -> None:
        """Fill the uint8 host tensor ``buf`` from ``offset``."""
        view = memoryview(buf.numpy())
        done = 0
        while done < len(view):
            n = os.preadv(self.fd, [view[done:]], offset + done)
            if n == 0:
                raise ExecutorError(f"{self.path}: unexpected end of file at byte {offset + done}")
            done += n

    def read_bytes(self, offset: int, nbytes: int) -> bytes:
        """Unaligned small read (row gathers) through a second, buffered descriptor."""
        if self._rows_fd < 0:
            self._rows_fd = os.open(self.path, os.O_RDONLY)
        return os.pread(self._rows_fd, nbytes, offset)

    def close(self) -> None:
        for name in ("fd", "_rows_fd"):
            fd = getattr(self, name)
            if fd >= 0:
                os.close(fd)
                setattr(self, name, -1)


@contextlib.contextmanager
def sigterm_as_exit():
    """Within the block, SIGTERM raises ``SystemExit(143)`` so ``finally`` clauses run."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
