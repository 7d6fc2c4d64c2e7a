"""Reading the files users name and writing the files llmsim produces.

Reading (``read_text``): every file a user gives (a config.json, a YAML profile, a record)
is opened without blocking (a named pipe must not hang the command), checked to be a
regular file no larger than ``MAX_INPUT_BYTES``, and decoded as UTF-8 text; each failure is
a typed error naming the flag or file and what is allowed. ``load_json`` and ``load_yaml``
parse strictly: a key given twice in one mapping is an error (JSON and YAML loaders keep
the last one silently).

Writing (``atomic_write``, ``StagedFiles``): each file is written under a unique temporary
name in its destination folder (``tempfile.mkstemp``), flushed and fsynced, then renamed
over the destination (``os.replace``, atomic on POSIX). Readers and concurrent writers see
either the old file or a complete new one, never a torn one, and a failure (disk full,
Ctrl-C) removes the temporary file. ``StagedFiles`` writes several files the same way and
renames them only once every one of them was written, so a failure leaves none of them.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import tempfile
from pathlib import Path

from simulator.errors import Interrupted, LlmsimError, OutputError

# mkstemp creates files readable by their owner only; a written file gets the usual mode
# (0o666 less the umask), as open() would give it. The umask is read once, at import.
_UMASK = os.umask(0)
os.umask(_UMASK)

MAX_INPUT_BYTES = 64 * 2**20  # a config.json is ~1 KB, a profile with its raw samples < 1 MB
_PATH_SHOWN = 160  # characters of a path shown in a message before it is shortened

# Ctrl-C: the command line's SIGINT handler raises ``Interrupted`` and sets this flag. An
# exception raised while Python runs a finalizer (``__del__``, a weakref callback) is printed
# and dropped by the interpreter; the flag survives, and no file is committed after it.
_interrupt = {"requested": False}


def request_interrupt() -> None:
    _interrupt["requested"] = True


def clear_interrupt() -> None:
    _interrupt["requested"] = False


def interrupt_requested() -> bool:
    return _interrupt["requested"]


def check_interrupt() -> None:
    """Raise ``Interrupted`` when Ctrl-C was pressed (even if its exception was swallowed)."""
    if _interrupt["requested"]:
        raise Interrupted()


# ------------------------------------------------------------------ naming paths in messages
def shown(path) -> str:
    """``path`` for a message: quoted, and shortened in the middle when very long."""
    text = os.fspath(path) if not isinstance(path, str) else path
    if len(text) > _PATH_SHOWN:
        text = f"{text[:80]}...{text[-60:]} ({len(text)} characters)"
    return repr(text)


def _label(label: str | None, path) -> str:
    return f"{label} {shown(path)}" if label else shown(path)


_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def kind_of(mode: int) -> str:
    """'a regular file', 'a directory', 'a named pipe', ... of an ``st_mode``."""
    if stat.S_ISREG(mode):
        return "a regular file"
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def _os_problem(e: OSError) -> str:
    if e.errno == errno.ENAMETOOLONG:
        return ("file name too long (at most 255 bytes per name and 4096 per path on Linux; "
                f"this one has {len(os.fsencode(e.filename or ''))} bytes)") if e.filename else "file name too long"
    if e.errno == errno.ELOOP:
        return "too many levels of symbolic links"
    return e.strerror or str(e)


def stat_path(path, label: str | None, error=LlmsimError) -> os.stat_result | None:
    """``os.stat(path)``, or None when nothing is there; a name too long, a loop of links or
    a permission problem raises ``error`` naming ``label`` and the path."""
    try:
        return os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        raise error(f"{_label(label, path)}: {_os_problem(e)}") from None
    except ValueError:  # an embedded NUL byte
        raise error(f"{_label(label, path)}: a path cannot contain a NUL character") from None


# ------------------------------------------------------------------ reading
def read_text(path, label: str | None = None, error=LlmsimError, max_bytes: int = MAX_INPUT_BYTES) -> str:
    """The text of the user-given file ``path``: a regular file of at most ``max_bytes``
    bytes of UTF-8 text. Raises ``error`` naming ``label`` (a flag, or None) and the path."""
    where = _label(label, path)
    try:
        # O_NONBLOCK: opening a named pipe for reading blocks until a writer appears.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise error(f"{where}: no such file") from None
    except IsADirectoryError:
        raise error(f"{where}: is a directory, not a file") from None
    except OSError as e:
        raise error(f"{where}: cannot open: {_os_problem(e)}") from None
    except ValueError:
        raise error(f"{where}: a path cannot contain a NUL character") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{where}: is {kind_of(st.st_mode)}, not a regular file")
        if st.st_size > max_bytes:
            raise error(f"{where}: too big ({st.st_size} bytes; at most {max_bytes} bytes are read)")
        chunks, total = [], 0
        while True:  # files under /proc report size 0: read until the end, within the limit
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:
                raise error(f"{where}: too big (more than {max_bytes} bytes)")
    except OSError as e:
        raise error(f"{where}: cannot read: {_os_problem(e)}") from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    nul = data.find(b"\x00")
    if nul >= 0:
        raise error(f"{where}: a binary file (NUL byte at offset {nul}), not text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{where}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start})") from None


def load_json(text: str, where: str, error=LlmsimError):
    """Parse JSON text; a key given twice in one object is an error, as is invalid JSON.
    ``where`` (the file) starts every message."""
    def pairs(items):
        out = {}
        for k, v in items:
            if k in out:
                raise error(f"{where}: duplicate key {k!r} (given twice in one object; allowed once)")
            out[k] = v
        return out
    try:
        return json.loads(text, object_pairs_hook=pairs)
    except json.JSONDecodeError as e:
        raise error(f"{where}: not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except RecursionError:
        raise error(f"{where}: nested too deeply to be a llmsim input") from None


def _strict_yaml_loader():
    import yaml

    class StrictLoader(yaml.SafeLoader):
        """SafeLoader that rejects a key given twice in one mapping (merge keys ``<<`` keep
        their YAML meaning: a key of the mapping itself overrides a merged one)."""

        def construct_mapping(self, node, deep=False):
            if isinstance(node, yaml.MappingNode):
                seen = {}
                for key_node, _ in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge":
                        continue
                    key = self.construct_object(key_node, deep=True)
                    try:
                        first = seen.get(key)
                    except TypeError:  # an unhashable key: the base class reports it
                        continue
                    if first is not None:
                        raise yaml.constructor.ConstructorError(
                            "while constructing a mapping", node.start_mark,
                            f"duplicate key {key!r} (first given at line {first.line + 1}; allowed once)",
                            key_node.start_mark)
                    seen[key] = key_node.start_mark
            return super().construct_mapping(node, deep)

    return StrictLoader


_YAML_LOADER = None


def load_yaml(text: str, where: str, error=LlmsimError):
    """Parse YAML text with the safe loader, rejecting duplicate keys. ``where`` (the file)
    starts every message, with the line of the problem."""
    import yaml
    global _YAML_LOADER
    if _YAML_LOADER is None:
        _YAML_LOADER = _strict_yaml_loader()
    try:
        return yaml.load(text, Loader=_YAML_LOADER)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise error(f"{where}: not valid YAML{at}: {getattr(e, 'problem', None) or e}") from None
    except RecursionError:
        raise error(f"{where}: nested too deeply to be a llmsim input") from None


# ------------------------------------------------------------------ writing
class StagedFiles:
    """Files written under unique temporary names in ``directory``, renamed over their
    destinations by ``commit`` only once all were written; ``discard`` (or leaving the
    ``with`` block by an exception) removes the temporaries. ``label`` (a flag) starts the
    messages; write errors raise ``OutputError`` naming the file and the reason.

        with StagedFiles(out_dir, "--report") as staged:
            staged.add("report.md", text)
            staged.add("plot.png", png_bytes)
        # both renamed here, or neither
    """

    def __init__(self, directory, label: str | None = None):
        self.directory = Path(directory)
        self.label = label
        self._staged: list[tuple[str, Path]] = []  # (temporary, destination)

    def _fail(self, path, e: OSError):
        where = f"{self.label} {shown(self.directory)}" if self.label else shown(self.directory)
        raise OutputError(f"{where}: cannot write {Path(path).name}: {_os_problem(e)}") from None

    def add(self, name: str, data: str | bytes) -> Path:
        """Write ``data`` (text as UTF-8) under a temporary name beside ``directory/name``."""
        dest = self.directory / name
        payload = data.encode("utf-8") if isinstance(data, str) else data
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=self.directory)
        except OSError as e:
            self._fail(dest, e)
        self._staged.append((tmp, dest))
        try:
            os.fchmod(fd, 0o666 & ~_UMASK)
            with os.fdopen(fd, "wb") as f:
                f.write(payload)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            self._fail(dest, e)
        return Path(tmp)

    def temporary(self, name: str) -> Path:
        """The temporary file of ``name`` staged by ``add`` (to read or check it before commit)."""
        for tmp, dest in self._staged:
            if dest.name == name:
                return Path(tmp)
        raise KeyError(name)

    def commit(self) -> list[Path]:
        """Rename every staged file over its destination (refused after Ctrl-C)."""
        done = []
        try:
            check_interrupt()
            for tmp, dest in self._staged:
                os.replace(tmp, dest)
                done.append(dest)
        except OSError as e:
            self._fail(dest, e)
        finally:
            self._staged = self._staged[len(done):]
            self.discard()
        _fsync_dir(self.directory)
        return done

    def discard(self) -> None:
        for tmp, _ in self._staged:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        self._staged = []

    def __enter__(self) -> "StagedFiles":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()


def _fsync_dir(directory: Path) -> None:
    """Make the renames durable (best effort: not every file system lets a folder be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path, data: str | bytes, label: str | None = None, check=None) -> Path:
    """Write ``data`` to ``path`` atomically (unique temporary name in the same folder,
    fsync, rename). ``check(temporary_path)``, when given, runs before the rename and may
    raise to refuse the file. Raises ``OutputError`` naming ``label`` and the file."""
    path = Path(path)
    with StagedFiles(path.parent if str(path.parent) else ".", label) as staged:
        tmp = staged.add(path.name, data)
        if check is not None:
            check(tmp)
    return path


# ------------------------------------------------------------------ output folders
def check_output_dir(path, label: str, error=OutputError) -> list[Path]:
    """Check, without creating anything, that folder ``path`` exists or can be created and
    accepts new files. Returns the folders that are missing (outermost first), which a
    writer creates and, when it fails, removes again (``remove_created``)."""
    p = Path(path)
    missing = []
    cur = p
    while True:
        st = stat_path(cur, label if cur == p else f"{label} {shown(p)}: folder", error)
        if st is not None:
            break
        missing.append(cur)
        if cur.parent == cur:
            break
        cur = cur.parent
    if st is None:
        raise error(f"{label} {shown(p)}: no existing folder above it")
    if not stat.S_ISDIR(st.st_mode):
        what = kind_of(st.st_mode)
        if cur == p:
            raise error(f"{label} {shown(p)}: is {what}, not a folder")
        raise error(f"{label} {shown(p)}: {shown(cur)} is {what}, not a folder")
    for m in missing:  # each name must be creatable: 255 bytes at most
        if len(os.fsencode(m.name)) > 255:
            raise error(f"{label} {shown(p)}: file name too long ({len(os.fsencode(m.name))} bytes in one name; "
                        "at most 255)")
    try:
        fd, probe = tempfile.mkstemp(prefix=".llmsim-probe-", dir=cur)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise error(f"{label} {shown(p)}: cannot write in {shown(cur)}: {_os_problem(e)}") from None
    return list(reversed(missing))


def make_dirs(missing: list[Path], label: str) -> None:
    """Create the folders ``check_output_dir`` found missing (outermost first)."""
    for d in missing:
        try:
            os.mkdir(d)
        except FileExistsError:
            pass  # a concurrent run made it
        except OSError as e:
            raise OutputError(f"{label} {shown(d)}: cannot create the folder: {_os_problem(e)}") from None


def remove_created(missing: list[Path]) -> None:
    """Remove the folders ``make_dirs`` created, innermost first, where they are empty."""
    for d in reversed(missing):
        try:
            os.rmdir(d)
        except OSError:
            return
