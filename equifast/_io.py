"""Atomic file writes: readers see the old file or the whole new one, never half of it.

Shared by reports, training runs (checkpoints, metrics) and the sweep results store.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Optional, Sequence, Tuple, Union

__all__ = ["atomic_write", "write_text_atomic", "write_csv_atomic", "save_figure_atomic",
           "save_torch_atomic", "remove_stale_temps", "check_own_folder", "json_object_with",
           "stage_folder", "commit_staged", "finish_commit", "deferred_interrupt", "FolderLock",
           "process_alive", "start_ticks", "json_safe", "make_parent"]

# what atomic_write names its temporary file: .<name>.<pid>.<8 hex>.tmp
_TMP = re.compile(r"\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp")
# a set of files being written (stage_folder), and one committed but not all moved in yet
_STAGE, _COMMIT, _JOURNAL = ".equifast-staging-", ".equifast-commit", "commit.json"
# the lock of a command writing into a folder (FolderLock: ".equifast-measure.lock")
_OWN_LOCK = re.compile(r"\.equifast-(?P<command>[a-z]+)\.lock")
# what a file manager leaves in a folder it opened (macOS Finder, Windows Explorer): a new
# output folder holding them was refused as "holding other files"
SYSTEM_FILES = frozenset({".DS_Store", ".localized", "Thumbs.db", "desktop.ini"})


def make_parent(path: Union[str, os.PathLike]) -> Path:
    """Make the folder ``path`` is to be written in (and its parents); returns ``Path(path)``."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # "[Errno 17] File exists: 'a'" named a part of the path alone
        raise OSError(err.errno, f"Cannot make the folder to write {str(path)!r} in "
                                 f"({err.strerror}: {err.filename!r})") from err
    return path


def atomic_write(path: Union[str, os.PathLike], write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a uniquely named file beside ``path``, flush it to disk and
    rename it over ``path`` (``os.replace`` is atomic on POSIX and Windows). The temporary
    file is removed if ``write`` fails."""
    path = make_parent(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(tmp)
        # opened for writing (and not truncated): Windows flushes only a handle that may write
        # (FlushFileBuffers), and os.fsync of a read-only one fails there with EBADF
        with open(tmp, "r+b") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as err:  # "[Errno 28] No space left on device" alone does not say where,
        # and a read-only folder named the hidden temporary file, not the file asked for
        if err.filename in (None, str(tmp)) and err.errno is not None:
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise
    finally:
        tmp.unlink(missing_ok=True)
    return path


def save_torch_atomic(obj, path: Union[str, os.PathLike]) -> Path:
    """``torch.save(obj)`` to ``path`` atomically. A full disk is an ``OSError`` naming
    ``path`` (torch reports it as "RuntimeError: ... unexpected pos")."""
    import torch

    class _Recording:  # the file as torch writes it, keeping the OSError torch swallows
        def __init__(self, fh):
            self.fh, self.error = fh, None

        def write(self, data):
            try:
                return self.fh.write(data)
            except OSError as err:
                self.error = err
                raise

        def flush(self):
            return self.fh.flush()

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            rec = _Recording(fh)
            try:
                torch.save(obj, rec)
            except RuntimeError as err:
                if rec.error is None:
                    raise
                raise rec.error from err

    return atomic_write(path, write)


def remove_stale_temps(folder: Union[str, os.PathLike], names: Iterable[str]) -> None:
    """Delete what a killed :func:`atomic_write` of one of ``names`` left in ``folder``: its
    temporary files whose process is gone (they may be as large as a checkpoint)."""
    folder, names = Path(folder), set(names)
    if not folder.is_dir():
        return
    for p in folder.iterdir():
        if _stale_temp(p.name) in names:
            p.unlink(missing_ok=True)


def _stale_temp(name: str):
    """The file name whose temporary file ``name`` is, when it is one of a killed
    :func:`atomic_write` (its process gone); else ``None``."""
    m = _TMP.fullmatch(name)
    return m["name"] if m and not pid_alive(int(m["pid"])) else None


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (when that cannot be told: ``True``)."""
    if pid == os.getpid():
        return True
    if sys.platform == "win32":
        return _pid_alive_windows(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True
    return True


def _pid_alive_windows(pid: int) -> bool:
    """:func:`pid_alive` on Windows, where ``os.kill(pid, 0)`` is no probe: 0 is CTRL_C_EVENT,
    sent to the console process group ``pid``, and where that fails the process is terminated
    (TerminateProcess). The process is opened for a query and its exit code read instead."""
    import ctypes

    if not 0 < pid <= 0xFFFFFFFF:  # no such process id
        return False
    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    kernel32.OpenProcess.restype = ctypes.c_void_p
    kernel32.OpenProcess.argtypes = (ctypes.c_uint32, ctypes.c_int, ctypes.c_uint32)
    kernel32.GetExitCodeProcess.argtypes = (ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32))
    kernel32.CloseHandle.argtypes = (ctypes.c_void_p,)
    process_query_limited_information, still_active, error_invalid_parameter = 0x1000, 259, 87
    handle = kernel32.OpenProcess(process_query_limited_information, 0, pid)
    if not handle:  # no such process (invalid parameter), or one we may not open: it runs
        return ctypes.get_last_error() != error_invalid_parameter
    try:
        code = ctypes.c_uint32()
        if not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)):
            return True
        return code.value == still_active  # (a process that exited with 259 reads as running)
    finally:
        kernel32.CloseHandle(handle)


def process_alive(host: Optional[str], pid: Optional[int], since: Optional[float] = None,
                  started: Optional[int] = None) -> bool:
    """Whether process ``pid`` on ``host`` still runs (assumed so for another host, which
    cannot be asked). A process of that id that is not the one named (the id reused, after a
    reboot or many processes later) is not: told by ``started``, its start in clock ticks since
    boot (:func:`start_ticks`, exact), else by ``since``, when it wrote what names it (a start
    after that, with a second of slack for the wall clock)."""
    if not pid:
        return False
    if host and host != socket.gethostname():
        return True
    if not pid_alive(int(pid)):
        return False
    if isinstance(started, int) and not isinstance(started, bool):
        # not the wall clock: a clock stepped forward while a lock was held made its live
        # holder look younger than the lock, and the lock stale
        ticks = start_ticks(int(pid))
        return ticks is None or ticks == started
    begun = _start_time(int(pid)) if isinstance(since, (int, float)) else None
    # a second of slack: the boot time is read in whole seconds
    return begun is None or begun <= since + 1


def start_ticks(pid: int) -> Optional[int]:
    """When process ``pid`` started, in clock ticks since boot, where the system says (Linux's
    /proc); else ``None``. With the pid it names one process."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            # field 22, after the command name in parentheses (which may hold spaces)
            return int(fh.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _start_time(pid: int) -> Optional[float]:
    """When process ``pid`` started (seconds since the epoch), where the system says (Linux's
    /proc); else ``None``."""
    ticks = start_ticks(pid)
    try:
        with open("/proc/stat") as fh:
            boot = next(int(line.split()[1]) for line in fh if line.startswith("btime "))
        return None if ticks is None else boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration, AttributeError):
        return None


class FolderLock:
    """The lock file ``name`` in ``folder``, naming its holder (host and pid inside), so that
    one process at a time writes there: a second is refused, on this host or (on a shared file
    system) another. A lock whose process is gone is stale and taken over, so a killed writer
    never blocks the next. ``what`` names the writer in the error ("sweep").

    Use ``with FolderLock(...):`` or :meth:`acquire` / :meth:`release`; :meth:`check` raises
    what :meth:`acquire` would, touching nothing."""

    def __init__(self, folder: Union[str, os.PathLike], name: str, what: str):
        self.folder, self.path, self.what = Path(folder), Path(folder) / name, what

    def holder(self) -> Tuple[Optional[str], str]:
        """``"this process"``, ``"another"`` (live), ``"stale"`` (its process gone) or ``None``
        (no lock), and how to name the holder."""
        try:
            other = json.loads(self.path.read_text() or "{}")
        except FileNotFoundError:
            return None, ""
        except (json.JSONDecodeError, OSError):
            other = {}
        if not isinstance(other, dict):
            other = {}
        # this pid and host, and this process's start: a lock an earlier process of this pid left
        # (a container restarted, its host name and pid the same) was taken as held already,
        # never rewritten, and so stale to every other process, which took it over as well
        if (other.get("pid") == os.getpid() and other.get("host") == socket.gethostname()
                and process_alive(None, os.getpid(), other.get("since"), other.get("started"))):
            return "this process", ""
        # an empty lock is one another writer has created and not yet written into
        if (not other and _age(self.path) < 10) or process_alive(other.get("host"), other.get("pid"),
                                                                  other.get("since"), other.get("started")):
            return "another", (f"pid {other.get('pid')} on {other.get('host')}" if other
                               else f"a {self.what} starting")
        return "stale", ""

    def _refusal(self, who: str) -> BlockingIOError:
        return BlockingIOError(
            f"Expected no other {self.what} writing to {str(self.folder)!r}, but {who} holds "
            f"{str(self.path)!r}; wait for it, or delete the lock if that process is gone.")

    def check(self) -> None:
        """Raise the ``BlockingIOError`` :meth:`acquire` would."""
        holder, who = self.holder()
        if holder == "another":
            raise self._refusal(who)

    def acquire(self) -> bool:
        """Take the lock (creating ``folder``); ``False`` when this process held it already.

        Raises:
            BlockingIOError: when a live process holds it.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time(),
              "started": start_ticks(os.getpid())}
        for _ in range(3):
            try:
                # a data file's mode (os.open's default, 0o777, made it executable)
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
            except FileExistsError:
                # read and deleted under the folder's lock: two processes that both read one
                # stale lock both deleted it, the second the lock the first had just taken
                # over, and both went on writing to the folder
                with _locked(self.folder):
                    holder, who = self.holder()
                    if holder == "this process":
                        return False
                    if holder == "another":
                        raise self._refusal(who) from None
                    # only a lock read as stale: one read as missing (released meanwhile) may
                    # have been taken since by a process that found none (not under this lock)
                    if holder == "stale":
                        self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as fh:
                json.dump(me, fh)
            return True
        raise BlockingIOError(f"Expected to take {str(self.path)!r}, but another process keeps "
                              "taking it.")

    def release(self) -> None:
        """Release the lock, if this process holds it."""
        if self.holder()[0] == "this process":
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> "FolderLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _age(path: Path) -> float:
    """Seconds since ``path`` was last written (infinite when it is gone)."""
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return math.inf


@contextlib.contextmanager
def deferred_interrupt():
    """Ctrl-C (SIGINT) and SIGTERM (``timeout``, a batch scheduler's time limit) during the block
    take effect when it ends: for a few renames that must all happen. Only in the main thread
    (elsewhere the block runs as it is)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    # a handler installed outside Python (getsignal: None) could not be put back: left alone
    signals = [s for s in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(s) is not None]
    caught: Dict[int, Any] = {}
    previous = {s: signal.signal(s, lambda signum, frame: caught.setdefault(signum, frame))
                for s in signals}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for s, frame in caught.items():
            if callable(previous[s]):
                previous[s](s, frame)  # Python's SIGINT handler: KeyboardInterrupt
            elif previous[s] == signal.SIG_DFL:
                signal.raise_signal(s)  # SIGTERM's default: the process ends, its set whole


def stage_folder(out: Union[str, os.PathLike]) -> Path:
    """A new hidden folder in ``out`` to write a set of files into before
    :func:`commit_staged` moves them in."""
    # named by host and pid: on a shared file system, another host's finish_commit (a Report.load,
    # the refused `equifast measure` of a second host) would otherwise read a live stage as that
    # of a process gone there, and delete files it had written
    return Path(tempfile.mkdtemp(prefix=f"{_STAGE}{socket.gethostname()}-{os.getpid()}-", dir=out))


def commit_staged(stage: Path, out: Union[str, os.PathLike], names: Sequence[str],
                  remove: Iterable[str] = (), check: Optional[Callable[[], None]] = None) -> None:
    """Move the files ``names`` (the last one last: a marker) from ``stage`` into ``out``,
    replacing those there, and delete ``remove`` from ``out``: all of it or, until it is
    done, nothing. The plan is written into ``stage``, which is then renamed
    ``.equifast-commit`` (the commit); a process killed after that leaves the rest to
    :func:`finish_commit`, which the next writer or reader of ``out`` calls. Ctrl-C waits
    until the set is in. ``check()``, called with the lock of ``out`` held before anything
    is moved, raises to commit nothing: a check of the files there that another writer's
    commit could otherwise change between it and this commit."""
    out = Path(out)
    with _locked(out):  # another writer's or reader's commit is not interleaved with this one
        _finish(out)  # an earlier set first: its plan would otherwise be replaced
        if check is not None:
            check()
        write_text_atomic(stage / _JOURNAL, json.dumps(
            {"move": list(names), "remove": [n for n in remove if n not in names]}))
        with deferred_interrupt():
            os.replace(stage, out / _COMMIT)
            _finish(out)


def finish_commit(out: Union[str, os.PathLike]) -> bool:
    """Complete a set of files :func:`commit_staged` committed to ``out`` but had not moved in
    all of when its process was killed, and delete staging folders of processes that are
    gone; returns whether a set was completed. Waits for a commit another process is making
    (it would otherwise move the same files, and one of the two fail)."""
    out = Path(out)
    if not out.is_dir():
        return False
    with _locked(out):
        return _finish(out)


@contextlib.contextmanager
def _locked(out: Path):
    """An exclusive lock of the folder ``out`` itself (``flock`` of the folder: no file is
    added), for one commit or finish at a time; none where the system has no such lock."""
    try:
        import fcntl

        fd = os.open(out, os.O_RDONLY)
    except (ImportError, OSError):  # Windows; a folder that cannot be opened for reading
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # a file system without flock (some NFS mounts): unlocked, as before
            pass
        yield
    finally:
        os.close(fd)  # releases the lock


def _finish(out: Path) -> bool:
    """:func:`finish_commit`, the lock of ``out`` held."""
    pending = out / _COMMIT
    done = False
    if (pending / _JOURNAL).is_file():
        plan = json.loads((pending / _JOURNAL).read_text())
        for name in plan["remove"]:
            (out / name).unlink(missing_ok=True)
        for name in plan["move"]:
            if (pending / name).exists():
                os.replace(pending / name, out / name)
        done = True
    if pending.is_dir():
        shutil.rmtree(pending)
    for p in out.glob(_STAGE + "*"):
        # "<host>-<pid>-<random>" (a host name may hold "-"), or "<pid>-<random>" of this host
        fields = p.name[len(_STAGE):].rsplit("-", 2)
        host = fields[0] if len(fields) == 3 else None
        pid = fields[-2] if len(fields) > 1 else ""
        if p.is_dir() and not (pid.isdigit() and process_alive(host, int(pid))):
            shutil.rmtree(p, ignore_errors=True)
    return done


def json_safe(value):
    """``value`` as plain JSON values: NaN and infinities as null (``json.dumps`` writes them
    as ``NaN``, which no JSON reader takes), NumPy/torch numbers and arrays as numbers and
    lists, tuples as lists, keys as text, anything else (a path, a device) as its text."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()  # a NumPy/torch number or array
        if isinstance(value, list):
            return json_safe(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def write_text_atomic(path: Union[str, os.PathLike], data: Union[str, bytes]) -> Path:
    """Write text or bytes to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data) if isinstance(data, bytes)
                        else tmp.write_text(data))


def write_csv_atomic(path: Union[str, os.PathLike], table) -> Path:
    """Write a pandas table to ``path`` as CSV (no index), atomically."""
    return atomic_write(path, lambda tmp: table.to_csv(tmp, index=False))


def save_figure_atomic(fig, path: Union[str, os.PathLike], dpi: int = 120) -> Path:
    """Save a matplotlib figure atomically, in the format of ``path``'s suffix (one that
    matplotlib writes: a ``ValueError`` otherwise, and for a folder)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"Expected a figure's file name, but {str(path)!r} is a folder; name a "
                         "file in it (figure.png).")
    fmt = path.suffix.lstrip(".").lower()
    formats = fig.canvas.get_supported_filetypes()
    if fmt not in formats:  # matplotlib would have taken the temporary file's ".tmp" as one
        raise ValueError(f"Expected a figure's file name ending in a format's suffix ("
                         f"{', '.join('.' + f for f in sorted(formats))}), but {str(path)!r} has "
                         f"{'none' if not fmt else repr(path.suffix)}.")
    return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format=fmt))


def writable_folder(path: Union[str, os.PathLike], what: str, keep: bool = True) -> Path:
    """``path`` created and checked to take a file, or an ``OSError`` naming it as ``what``
    (``"the --out folder"``); the folders it made are removed again on failure, and with
    ``keep=False`` in any case (a check that leaves nothing behind)."""
    out = Path(path)
    made = [p for p in (out, *out.parents) if not p.exists()]  # innermost first
    try:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OSError(f"Cannot create {what} {str(path)!r} ({err.strerror or err}).") from err
        try:
            tempfile.TemporaryFile(dir=out).close()
        except OSError as err:
            raise PermissionError(f"Expected {what} {str(path)!r} to be writable, but it is not "
                                  f"({err}).") from err
    except BaseException:
        keep = False
        raise
    finally:
        for folder in made if not keep else ():
            try:
                folder.rmdir()
            except OSError:  # not empty (another's files meanwhile), or gone
                break
    return out


def lies_in(path: Union[str, os.PathLike], folder: Union[str, os.PathLike]) -> bool:
    """Whether ``path`` is ``folder`` or inside it (links resolved): results written there
    would be read as data from ``folder`` by the next run."""
    inner, outer = Path(path).resolve(), Path(folder).resolve()
    return outer == inner or outer in inner.parents


def json_object_with(*keys: str) -> Callable[[Path], bool]:
    """A marker check for :func:`check_own_folder`: the file holds a JSON object with ``keys``
    (what this library writes there), not a user's file of the same name."""
    def check(path: Path) -> bool:
        try:
            doc = json.loads(Path(path).read_text())
        except (OSError, ValueError):  # UnicodeDecodeError is a ValueError
            return False
        return isinstance(doc, dict) and all(k in doc for k in keys)
    return check


def check_own_folder(path: Union[str, os.PathLike], markers: Sequence[str], what: str,
                     flag: str, ours: Optional[Dict[str, Callable[[Path], bool]]] = None,
                     lock: Optional[str] = None) -> Path:
    """Raise ``FileExistsError`` unless ``path`` is missing, empty (but for a file manager's
    ``.DS_Store``, ``Thumbs.db``, ...: kept as they are), or holds one of ``markers``
    (what this library writes there first): a user's own files are never replaced. ``what``
    names the folder ("a run folder"), ``flag`` the argument that gave it (``--out``);
    ``ours``: ``{marker: check}`` for markers a user's file may share a name with
    (``recipe.json``, ``spec.json``): one that fails its check (:func:`json_object_with`) marks
    nothing. ``lock``: the :class:`FolderLock` file of the caller's own command (its refusal is
    the caller's to raise); a live lock of another command there (``equifast measure``
    writing into it, its files not in yet) is a ``BlockingIOError``, a stale one is left out."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"Expected {flag} {str(path)!r} to be a folder, but it is a file.")
    present = [m for m in markers if (path / m).exists()]
    foreign = [m for m in present if ours and m in ours and not ours[m](path / m)]
    if path.is_dir() and len(foreign) == len(present):
        for p in path.iterdir():
            command = _OWN_LOCK.fullmatch(p.name)
            if command and p.name != lock:  # a study's figure.png was replaced by the
                # measurement's (or its shifts.png deleted) as that committed its set
                FolderLock(path, p.name, f"`equifast {command['command']}`").check()
        others = sorted(p.name for p in path.iterdir()
                        if not (p.name.startswith(_STAGE) or p.name == _COMMIT or p.name in SYSTEM_FILES
                                or _OWN_LOCK.fullmatch(p.name) or _stale_temp(p.name)))
        if others:
            mine = (f" (its {', '.join(foreign)} {'does' if len(foreign) == 1 else 'do'} not "
                    f"mark {what})" if foreign else "")
            raise FileExistsError(f"Expected {flag} {str(path)!r} to be {what} (with {markers[0]}) "
                                  f"or empty, but it holds other files: {others[:5]}{mine}. "
                                  f"Use another {flag}.")
    return path
