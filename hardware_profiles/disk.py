"""Offload storage: the ``disk`` section of a profile.

Method (in the spirit of fio's sequential read/write jobs)
---------------------------------------------------------
* A scratch file in ``--disk-dir`` (4 GiB; ``--quick``: 256 MiB; smaller when the disk is
  nearly full), deleted afterwards, also on errors and Ctrl-C. ``capacity_GiB`` is the
  free space of ``--disk-dir`` before the file is made.
* Direct I/O: ``O_DIRECT`` reads and writes (``os.preadv`` / ``os.pwrite``) from page-aligned
  buffers allocated with ``mmap``, filled with random bytes. O_DIRECT bypasses the page
  cache, so the file need not exceed RAM; it exceeds the device's own caches only as far
  as its size allows. Block sizes 1, 4, 16, 64 MiB (``--quick``: 1, 8, 64); each pass
  moves 512 MiB (``--quick``: 128 MiB) of a different region of the file; writes end with
  ``fdatasync`` inside the timed region, so they are durable. ``read_direct_GBps`` and
  ``write_direct_GBps`` are the medians over the block sizes (1, 8 and 64 MiB: the range of
  an executor's per-layer requests) of the median pass rates (1e9 bytes/s). On the 2-core
  VM the 64 MiB read rate alone moved between 1.2 and 2.1 GB/s within an hour while 1-8
  MiB reads stayed near 1.5-1.8.
  Where the file system refuses O_DIRECT (tmpfs, some network file systems) the direct
  figures come from buffered I/O with the region evicted first (``posix_fadvise
  DONTNEED``), and ``measurements.disk.direct_io`` says so.
* Parallel readers: 1, 2, 4, 8 threads (``--quick``: 1, 4) each read their own share of a
  pass with O_DIRECT, 16 MiB blocks; the rate is the total over the wall time (threads
  release the GIL in ``preadv``). Kept under ``measurements.disk.parallel_read``.
* Page cache, recorded separately: a region (1 GiB; ``--quick``: 128 MiB; at most a
  quarter of the available RAM) is evicted and read buffered once ("cold", the device
  through the page cache), then re-read while cached: ``read_cached_GBps``. Buffered
  writes of that region without fsync (into the page cache): ``write_cached_GBps``; the
  fsync that follows is timed apart.
* Read to GPU (with a CUDA device): O_DIRECT reads into two pinned, page-aligned bounce
  buffers of 64 MiB, each followed by an asynchronous host-to-device copy that overlaps
  the next read; the rate is the bytes over the wall time
  (``measurements.disk.read_to_gpu``).
"""

from __future__ import annotations

import errno
import mmap
import os
import shutil
import threading
import time
from pathlib import Path

from hardware_profiles.timing import Result, summarize, sig
from simulator.errors import ProfileError
from simulator.units import GB, GiB, MiB

ALIGN = 4096
LAYOUT = {  # by quick
    False: {"file": 4 * GiB, "pass": 512 * MiB, "passes": 3, "blocks": (1 * MiB, 4 * MiB, 16 * MiB, 64 * MiB),
            "readers": (1, 2, 4, 8), "cached": GiB, "parallel_block": 16 * MiB},
    True: {"file": 256 * MiB, "pass": 128 * MiB, "passes": 2, "blocks": (1 * MiB, 8 * MiB, 64 * MiB),
           "readers": (1, 4), "cached": 128 * MiB, "parallel_block": 16 * MiB},
}
MIN_FILE = 64 * MiB
BOUNCE = 64 * MiB


def check_dir(path: str | os.PathLike, flag: str = "--disk-dir") -> Path:
    """The directory to profile, checked to exist and accept a new file; ProfileError else."""
    import stat

    from simulator.files import stat_path
    p = Path(path).expanduser()
    st = stat_path(p, flag, ProfileError)
    if st is None:
        raise ProfileError(f"{flag} {str(path)!r}: no such directory")
    if not stat.S_ISDIR(st.st_mode):
        raise ProfileError(f"{flag} {str(path)!r}: not a directory")
    probe = p / f".llmsim-probe-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ProfileError(f"{flag} {str(path)!r}: cannot write a file there ({e.strerror or e})") from None
    return p


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


def mount_of(path: Path) -> dict:
    """{"device", "mount", "fstype"} of the file system holding ``path`` (from /proc/mounts)."""
    best = {}
    real = str(path.resolve())
    try:
        with open("/proc/mounts") as f:
            for line in f:
                dev, mnt, fstype = line.split()[:3]
                mnt = mnt.replace("\\040", " ")
                if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best.get("mount", "")):
                    best = {"device": dev, "mount": mnt, "fstype": fstype}
    except OSError:
        pass
    return best


def aligned_buffer(nbytes: int) -> mmap.mmap:
    """A page-aligned anonymous buffer (what O_DIRECT needs), filled with random bytes."""
    buf = mmap.mmap(-1, nbytes)
    block = os.urandom(min(nbytes, MiB))
    for off in range(0, nbytes, len(block)):
        n = min(len(block), nbytes - off)
        buf[off:off + n] = block[:n]
    return buf


def close_buffer(buf) -> None:
    """Unmap ``buf`` now if nothing still views it; otherwise (a memoryview held by the
    traceback of an interrupted read) leave it to the garbage collector instead of
    replacing the original exception, Ctrl-C included, with a BufferError."""
    try:
        buf.close()
    except BufferError:
        pass


def open_file(path: Path, write: bool, direct: bool) -> int:
    flags = (os.O_RDWR | os.O_CREAT) if write else os.O_RDONLY
    if direct:
        flags |= os.O_DIRECT
    return os.open(path, flags, 0o600)


def supports_direct(directory: Path) -> bool:
    """Whether the file system of ``directory`` accepts O_DIRECT (an aligned 4 KiB write and read)."""
    if not hasattr(os, "O_DIRECT"):
        return False
    probe = directory / f".llmsim-direct-{os.getpid()}"
    buf = aligned_buffer(ALIGN)
    try:
        fd = os.open(probe, os.O_RDWR | os.O_CREAT | os.O_DIRECT, 0o600)
        try:
            os.pwrite(fd, memoryview(buf), 0)
            os.preadv(fd, [memoryview(buf)], 0)
        finally:
            os.close(fd)
        return True
    except OSError as e:
        if e.errno in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
            return False
        raise
    finally:
        try:
            os.unlink(probe)
        except OSError:
            pass
        close_buffer(buf)


def io_pass(fd: int, buf, offset: int, nbytes: int, block: int, write: bool) -> float:
    """Seconds to read or write ``nbytes`` at ``offset`` in ``block``-sized calls; writes
    end with fdatasync inside the timed region."""
    mv = memoryview(buf)
    t0 = time.perf_counter()
    done = 0
    while done < nbytes:
        n = min(block, nbytes - done)
        if write:
            got = os.pwrite(fd, mv[:n], offset + done)
        else:
            got = os.preadv(fd, [mv[:n]], offset + done)
        if got <= 0:
            raise OSError(errno.EIO, f"{'write' if write else 'read'} of {n} bytes at {offset + done} returned {got}")
        done += got
    if write:
        os.fdatasync(fd)
    return time.perf_counter() - t0


def evict(fd: int, offset: int, nbytes: int) -> None:
    """Drop a clean region from the page cache (``posix_fadvise DONTNEED`` after a sync)."""
    os.fdatasync(fd)
    if hasattr(os, "posix_fadvise"):
        os.posix_fadvise(fd, offset, nbytes, os.POSIX_FADV_DONTNEED)


def rate_stats(nbytes: int, times_s: list[float]) -> dict:
    """Median and p10/p90 of pass rates (GB/s, 1e9 bytes/s) with the raw times."""
    s = summarize([nbytes / t for t in times_s], "disk rates")
    return {"GBps": sig(s.median / GB), "p10_GBps": sig(s.p10 / GB), "p90_GBps": sig(s.p90 / GB),
            "bytes_per_pass": nbytes, "times_s": [sig(t) for t in times_s]}


def parallel_read(path: Path, direct: bool, readers: int, nbytes: int, block: int, offset: int,
                  file_size: int) -> float:
    """Wall seconds for ``readers`` threads to read ``nbytes`` together, each its own share."""
    share = (nbytes // readers) // block * block or block
    bufs = [aligned_buffer(block) for _ in range(readers)]
    fds = [open_file(path, False, direct) for _ in range(readers)]
    if not direct:
        evict(fds[0], 0, file_size)
    errors: list[BaseException] = []
    barrier = threading.Barrier(readers + 1)

    def work(i):
        try:
            barrier.wait()
            io_pass(fds[i], bufs[i], (offset + i * share) % file_size, share, block, False)
        except BaseException as e:  # reported by the caller
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(readers)]
    try:
        for t in threads:
            t.start()
        barrier.wait()
        t0 = time.perf_counter()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - t0
    finally:
        for fd in fds:
            os.close(fd)
        for b in bufs:
            close_buffer(b)
    if errors:
        raise errors[0]
    return elapsed * nbytes / (share * readers)  # scale to exactly nbytes


def read_to_gpu(torch, device, path: Path, direct: bool, nbytes: int, file_size: int) -> float:
    """Seconds to move ``nbytes`` of the file into GPU memory through two pinned bounce
    buffers (read into one while the other's H2D copy runs)."""
    bounce = min(BOUNCE, nbytes)
    raw = [torch.empty(bounce + ALIGN, dtype=torch.uint8, pin_memory=True) for _ in range(2)]
    views = []
    for r in raw:
        skip = (-r.data_ptr()) % ALIGN
        views.append(r[skip:skip + bounce])
    dest = torch.empty(nbytes, dtype=torch.uint8, device=device)
    events = [torch.cuda.Event(), torch.cuda.Event()]
    stream = torch.cuda.Stream(device)
    fd = open_file(path, False, direct)
    try:
        if not direct:
            evict(fd, 0, file_size)
        torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        for i, off in enumerate(range(0, nbytes, bounce)):
            j = i % 2
            events[j].synchronize()  # the copy out of this buffer has finished
            n = min(bounce, nbytes - off)
            io_pass(fd, views[j].numpy(), off % file_size, n, n, False)
            with torch.cuda.stream(stream):
                dest[off:off + n].copy_(views[j][:n], non_blocking=True)
                events[j].record(stream)
        torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - t0
    finally:
        os.close(fd)
    with open(path, "rb") as f:
        head = f.read(ALIGN)
    landed = dest[:ALIGN].cpu().numpy().tobytes()
    del dest, raw, views
    torch.cuda.empty_cache()
    if landed != head:
        raise RuntimeError("read to GPU: the bytes on the GPU differ from the file's")
    return elapsed


def over_blocks(table: dict) -> float:
    """The median over block sizes of a {block_bytes: {"GBps": ...}} table."""
    rates = sorted(v["GBps"] for v in table.values())
    mid = len(rates) // 2
    return sig(rates[mid] if len(rates) % 2 else 0.5 * (rates[mid - 1] + rates[mid]))


def measure(disk_dir: Path, quick: bool, reporter, torch=None, device=None) -> Result:
    """Measure the ``disk`` section in ``disk_dir`` (checked by ``check_dir``)."""
    lay = dict(LAYOUT[quick])
    free = free_bytes(disk_dir)
    file_size = lay["file"]
    while file_size > MIN_FILE and file_size * 1.25 + 256 * MiB > free:
        file_size //= 2
    if file_size * 1.1 > free:
        raise ProfileError(f"--disk-dir {str(disk_dir)!r}: only {free / MiB:.0f} MiB free; "
                           f"the disk test needs at least {MIN_FILE * 1.1 / MiB:.0f} MiB")
    pass_bytes = min(lay["pass"], file_size)
    avail = _mem_available()
    cached = min(lay["cached"], file_size, (avail // 4) // MiB * MiB if avail else lay["cached"])
    direct = supports_direct(disk_dir)
    mount = mount_of(disk_dir)
    path = disk_dir / f".llmsim-disk-test-{os.getpid()}.bin"
    meas: dict = {"method": "see hardware_profiles/disk.py", "file_bytes": file_size, "pass_bytes": pass_bytes,
                  "direct_io": "O_DIRECT" if direct else
                  "O_DIRECT refused here: buffered I/O after posix_fadvise(DONTNEED)",
                  "dir": str(disk_dir), **({"filesystem": mount} if mount else {})}
    blocks = lay["blocks"]
    steps = 2 * len(blocks) + len(lay["readers"]) + 3 + (1 if torch is not None else 0)
    step = 0
    big = max(blocks)
    buf = aligned_buffer(big)
    try:
        # ---- make the file (timed too: the first write also allocates extents)
        reporter.advance(step, steps, f"create {file_size // MiB} MiB file")
        fd = open_file(path, True, direct)
        try:
            t = io_pass(fd, buf, 0, file_size, big, True)
            meas["initial_write"] = {"GBps": sig(file_size / t / GB), "block_bytes": big}
            rotation = 0

            def region():
                nonlocal rotation
                off = (rotation * pass_bytes) % file_size
                rotation += 1
                return off

            # ---- direct writes and reads by block size
            writes, reads = {}, {}
            for bs in blocks:
                step += 1
                reporter.advance(step, steps, f"direct write {bs // MiB} MiB blocks")
                writes[bs] = rate_stats(pass_bytes, [io_pass(fd, buf, region(), pass_bytes, bs, True)
                                                     for _ in range(lay["passes"])])
            for bs in blocks:
                step += 1
                reporter.advance(step, steps, f"direct read {bs // MiB} MiB blocks")
                times = []
                for _ in range(lay["passes"]):
                    off = region()
                    if not direct:
                        evict(fd, off, pass_bytes)
                    times.append(io_pass(fd, buf, off, pass_bytes, bs, False))
                reads[bs] = rate_stats(pass_bytes, times)
            meas["direct_write"] = {"by_block_bytes": writes}
            meas["direct_read"] = {"by_block_bytes": reads}
        finally:
            os.close(fd)

        # ---- parallel readers
        par = {}
        for r in lay["readers"]:
            step += 1
            reporter.advance(step, steps, f"{r} parallel readers")
            times = [parallel_read(path, direct, r, pass_bytes, lay["parallel_block"], region(), file_size)
                     for _ in range(lay["passes"])]
            par[r] = rate_stats(pass_bytes, times)
        meas["parallel_read"] = {"block_bytes": lay["parallel_block"], "by_readers": par}

        # ---- page cache: cold buffered read, then cached re-reads and buffered writes
        step += 1
        reporter.advance(step, steps, "page cache")
        fd = open_file(path, True, False)
        try:
            evict(fd, 0, cached)
            cold = io_pass(fd, buf, 0, cached, big, False)
            warm = [io_pass(fd, buf, 0, cached, big, False) for _ in range(max(3, lay["passes"]))]
            step += 1
            reporter.advance(step, steps, "buffered write")
            wtimes, flush = [], []
            for _ in range(max(3, lay["passes"])):
                wtimes.append(_buffered_write(fd, buf, cached, big))
                t0 = time.perf_counter()
                os.fdatasync(fd)
                flush.append(time.perf_counter() - t0)
        finally:
            os.close(fd)
        read_cached = rate_stats(cached, warm)
        write_cached = rate_stats(cached, wtimes)
        meas["page_cache"] = {
            "region_bytes": cached, "cold_buffered_read_GBps": sig(cached / cold / GB),
            "cached_read": read_cached, "buffered_write_no_sync": write_cached,
            "fdatasync_after_write_s": [sig(t) for t in flush],
            "cached_over_direct_read": sig(read_cached["GBps"] / over_blocks(reads), 3),
        }

        # ---- read to GPU through pinned bounce buffers
        if torch is not None and device is not None and device.type == "cuda":
            step += 1
            reporter.advance(step, steps, "read to GPU")
            n = min(pass_bytes * 2, file_size)
            times = [read_to_gpu(torch, device, path, direct, n, file_size) for _ in range(lay["passes"])]
            meas["read_to_gpu"] = {"bounce_bytes": BOUNCE, "buffers": 2, **rate_stats(n, times)}
    finally:
        try:
            os.unlink(path)  # first: the scratch file must go whatever happens next
        except OSError:
            pass
        close_buffer(buf)

    values = {"capacity_GiB": sig(free / GiB, 5), "read_direct_GBps": over_blocks(reads),
              "write_direct_GBps": over_blocks(writes), "read_cached_GBps": read_cached["GBps"],
              "write_cached_GBps": write_cached["GBps"]}
    if mount.get("device"):
        values["name"] = f"{mount['device']} ({mount.get('fstype', '?')})"
    machine = {"disk": values.get("name", "unknown"), "disk_dir": str(disk_dir)}
    return Result(values=values, measurements=meas, machine=machine)


def _buffered_write(fd: int, buf, nbytes: int, block: int) -> float:
    mv = memoryview(buf)
    t0 = time.perf_counter()
    done = 0
    while done < nbytes:
        n = min(block, nbytes - done)
        done += os.pwrite(fd, mv[:n], done)
    return time.perf_counter() - t0


def _mem_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None
