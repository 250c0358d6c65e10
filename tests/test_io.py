"""equifast._io: the commit of a set of files into a folder (equifast measure --out), and
atomic writes that name the file asked for when they fail."""

import os
import threading
from pathlib import Path

import pytest

from equifast._io import commit_staged, finish_commit, stage_folder


def _stage(out: Path, content: str, names=("a.txt", "report.json")) -> Path:
    stage = stage_folder(out)
    for name in names:
        (stage / name).write_text(content)
    return stage


def _while_moving_in(monkeypatch, out: Path, other) -> list:
    """At the first move of a file into ``out``, run ``other`` in a thread (as another
    process would run it) and give it 0.5 s before the move goes on; returns its errors."""
    real, errors, started = os.replace, [], []

    def run():
        try:
            other()
        except BaseException as err:  # noqa: BLE001 -- reported to the test
            errors.append(err)

    def replace(src, dst):
        if not started and Path(dst).parent == out and Path(src).parent != out:
            started.append(threading.Thread(target=run))
            started[0].start()
            started[0].join(0.5)
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    errors.append(started)
    return errors


def test_a_reader_finishing_a_live_commit_breaks_neither(tmp_path, monkeypatch):
    # Report.load (finish_commit) in another process while `measure --out` moved its set in:
    # both moved the same files, and the writer failed on a file the reader had moved
    out = tmp_path / "out"
    out.mkdir()
    commit_staged(_stage(out, "old"), out, ["a.txt", "report.json"])
    errors = _while_moving_in(monkeypatch, out, lambda: finish_commit(out))
    commit_staged(_stage(out, "new"), out, ["a.txt", "report.json"])
    started = errors.pop()
    started[0].join(10)
    assert errors == []
    assert {p.name: p.read_text() for p in out.iterdir()} == {"a.txt": "new", "report.json": "new"}


def test_two_writers_committing_at_once_leave_one_set_whole(tmp_path, monkeypatch):
    # a second `measure --out` into the same folder committed while the first moved its set
    # in: it failed on the first's pending commit, or broke the first's moves
    out = tmp_path / "out"
    out.mkdir()
    second = _stage(out, "second", ("b.txt", "report.json"))
    errors = _while_moving_in(monkeypatch, out, lambda: commit_staged(
        second, out, ["b.txt", "report.json"], remove=["a.txt"]))
    commit_staged(_stage(out, "first"), out, ["a.txt", "report.json"])
    started = errors.pop()
    started[0].join(10)
    assert errors == []
    assert {p.name: p.read_text() for p in out.iterdir()} == {"b.txt": "second",
                                                               "report.json": "second"}


def test_a_sigint_handler_from_outside_python_is_left_alone(monkeypatch):
    # signal.signal returns None for it: "restoring" None raised TypeError after the block
    import signal

    from equifast._io import deferred_interrupt

    installed = []
    monkeypatch.setattr(signal, "getsignal", lambda signum: None)
    monkeypatch.setattr(signal, "signal", lambda signum, handler: installed.append(handler))
    ran = []
    with deferred_interrupt():
        ran.append(True)
    assert ran == [True] and installed == []


def test_sigterm_during_a_commit_ends_the_process_once_the_set_is_whole(tmp_path):
    # `timeout` and batch schedulers stop a run with SIGTERM: it ended the process between two
    # renames, leaving the new points beside the earlier meta until a later run finished them
    import signal
    import subprocess
    import sys

    script = (
        "import os, signal, sys\n"
        "signal.signal(signal.SIGTERM, signal.SIG_DFL)  # as a job a shell started may not have it\n"
        "from equifast._io import deferred_interrupt\n"
        "with deferred_interrupt():\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        f"    open({str(tmp_path / 'second')!r}, 'w').close()\n"
        f"open({str(tmp_path / 'after')!r}, 'w').close()\n")
    done = subprocess.run([sys.executable, "-c", script], timeout=120)
    assert done.returncode == -signal.SIGTERM  # it still ends, by the signal, after the block
    assert (tmp_path / "second").exists() and not (tmp_path / "after").exists()
    # a SIGTERM handler of the caller's runs after the block, as Python's SIGINT one does
    seen = []

    def mine(signum, frame):
        seen.append(signum)

    previous = signal.signal(signal.SIGTERM, mine)
    try:
        from equifast._io import deferred_interrupt
        with deferred_interrupt():
            os.kill(os.getpid(), signal.SIGTERM)
            assert seen == []
        assert seen == [signal.SIGTERM] and signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_atomic_write_flushes_a_handle_open_for_writing(tmp_path, monkeypatch):
    # Windows flushes a file to disk (FlushFileBuffers) only through a handle that may write:
    # the file was reopened read-only for os.fsync, which failed there with EBADF, so every
    # report, checkpoint and store record failed to save. fsync here refuses as Windows does.
    import errno

    import pytest

    from equifast._io import write_text_atomic

    fcntl = pytest.importorskip("fcntl")
    real, synced = os.fsync, []

    def fsync(fd):
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY:
            raise OSError(errno.EBADF, "Bad file descriptor")
        synced.append(os.fstat(fd).st_size)
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    write_text_atomic(tmp_path / "report.json", "whole")
    assert (tmp_path / "report.json").read_text() == "whole"
    assert synced == [len("whole")]  # flushed once, the whole file (not truncated by the open)
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_pid_alive_on_windows_asks_the_process_and_never_signals_it(monkeypatch):
    # os.kill(pid, 0) on Windows sends CTRL_C_EVENT (0) to the console group `pid` or, where
    # that fails, terminates the process: a stale temporary file's pid (of a process gone, or
    # reused by another one) got that process killed or interrupted
    import ctypes
    import sys
    from types import SimpleNamespace

    from equifast import _io

    running, exited, denied = 4242, 4343, 4444  # processes of this fake Windows
    handles, opened, closed, error = {}, [], [], [0]

    def open_process(access, inherit, pid):
        if pid == denied or pid not in (running, exited):
            error[0] = 5 if pid == denied else 87  # ERROR_ACCESS_DENIED, ERROR_INVALID_PARAMETER
            return None
        handles[1000 + pid] = pid
        opened.append(1000 + pid)
        return 1000 + pid

    def get_exit_code(handle, code):
        code._obj.value = 259 if handles[handle] == running else 0  # STILL_ACTIVE
        return 1

    kernel32 = SimpleNamespace(OpenProcess=open_process, GetExitCodeProcess=get_exit_code,
                               CloseHandle=lambda handle: closed.append(handle) or 1)

    def kill(pid, sig):
        raise AssertionError(f"os.kill({pid}, {sig}) on Windows")

    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setattr(os, "kill", kill)
    monkeypatch.setattr(ctypes, "WinDLL", lambda name, use_last_error=False: kernel32, raising=False)
    monkeypatch.setattr(ctypes, "get_last_error", lambda: error[0], raising=False)
    assert [_io.pid_alive(p) for p in (running, exited, denied, 4545, 2 ** 40)] == [
        True, False, True, False, False]
    assert _io.pid_alive(os.getpid())
    assert closed == opened == [1000 + running, 1000 + exited]  # every handle given back


def test_without_fcntl_equifast_imports_and_commits_unlocked(tmp_path):
    # Windows has neither fcntl nor a lock of a folder: the import and a commit must not need it
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['fcntl'] = None\n"
        "import equifast\n"
        "from pathlib import Path\n"
        "from equifast._io import commit_staged, finish_commit, stage_folder\n"
        f"out = Path({str(tmp_path)!r})\n"
        "stage = stage_folder(out)\n"
        "(stage / 'report.json').write_text('new')\n"
        "commit_staged(stage, out, ['report.json'])\n"
        "print(finish_commit(out), sorted(p.name for p in out.iterdir()))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "['report.json']"]
    assert (tmp_path / "report.json").read_text() == "new"


def test_finish_commit_keeps_the_staging_folder_of_a_process_on_another_host(tmp_path):
    # on a shared file system, a Report.load (or a refused `equifast measure`) on a second host
    # deleted the staging folder of a measurement running on the first (its pid is no process
    # here), and the files it had written there were missing from the set it committed
    import socket
    import subprocess
    import sys

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    pid = int(gone.stdout)  # a process that has exited
    live = _stage(tmp_path, "new")
    other = live.rename(tmp_path / f".equifast-staging-other-host.lan-{pid}-a1b2c3d4")
    here = tmp_path / f".equifast-staging-{socket.gethostname()}-{pid}-e5f6a7b8"
    old_style = tmp_path / f".equifast-staging-{pid}-c9d0e1f2"  # of this host, before hosts
    here.mkdir()
    old_style.mkdir()
    assert finish_commit(tmp_path) is False
    assert sorted(p.name for p in tmp_path.iterdir()) == [other.name]
    assert sorted(p.name for p in other.iterdir()) == ["a.txt", "report.json"]
    assert stage_folder(tmp_path).name.startswith(f".equifast-staging-{socket.gethostname()}-"
                                                  f"{os.getpid()}-")


def test_report_load_finishes_a_first_set_killed_before_its_report_json_was_moved_in(
        tmp_path, monkeypatch):
    # `equifast measure --out DIR` into a new DIR, killed right after the commit (the stage
    # renamed .equifast-commit) but before report.json was moved in: Report.load(DIR) said
    # "a folder without report.json" instead of finishing the set, as it does for a later one
    import pytest

    from equifast.report import Report

    out = tmp_path / "out"
    out.mkdir()
    rows = [{"point": "p0", "part": "early", "transform": "rotation(90)", "family": "rotation",
             "metric": "correlation", "channel": 0.5, "layer": 0.6, "undefined_fraction": 0.0,
             "n_images": 4, "order": 0}]
    stage = stage_folder(out)
    names = [p.name for p in Report.from_rows(rows, {"model": "toy"}).save(stage / "report.json")]
    real = os.replace

    def killed(src, dst):  # the process dies at its first move into out
        if Path(dst).parent == out and Path(src).parent != out:
            raise KeyboardInterrupt("killed")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        commit_staged(stage, out, names)
    monkeypatch.setattr(os, "replace", real)
    assert not (out / "report.json").exists() and (out / ".equifast-commit").is_dir()
    assert Report.load(out).meta["model"] == "toy"
    assert sorted(p.name for p in out.iterdir()) == sorted(names)


def test_a_report_that_cannot_be_written_names_the_file_asked_for(tmp_path, monkeypatch):
    # "[Errno 17] File exists: 'afile.txt'" (pathlib's mkdir) and, read-only, the hidden
    # temporary file ".r.json.22022.635562ac.tmp" were all Report.save and .plot said
    import errno

    import torch

    import equifast as ef

    x = torch.rand(2, 4, 8, 8)
    model = torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.Flatten(),
                                torch.nn.Linear(256, 2))
    report = ef.measure(model, x, transforms=[ef.Rotation(1)], batch_size=2)
    (tmp_path / "afile.txt").write_text("mine")
    for call, target in ((report.save, "afile.txt/r.json"), (report.plot, "afile.txt/f.png"),
                         (report.save, "afile.txt/sub/r.csv")):
        with pytest.raises(OSError, match="Cannot make the folder to write '.*afile.txt/"):
            call(str(tmp_path / target))
    assert (tmp_path / "afile.txt").read_text() == "mine"

    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "write_text", read_only)
    with pytest.raises(OSError) as err:
        report.save(str(tmp_path / "r.json"))
    assert err.value.filename == str(tmp_path / "r.json") and ".tmp" not in str(err.value)
    assert list(tmp_path.iterdir()) == [tmp_path / "afile.txt"]


def test_a_stale_lock_found_by_two_processes_at_once_is_taken_over_by_one(tmp_path):
    # both read the killed writer's lock as stale and deleted it, the second deleting the lock
    # the first had just taken over: both went on writing into the folder. Reading the lock is
    # slowed (a slow or network file system) so that the two reads always overlap.
    import json
    import socket
    import subprocess
    import sys

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    folder, ready = tmp_path / "out", tmp_path / "ready"
    folder.mkdir()
    ready.mkdir()
    lock = folder / ".equifast-measure.lock"
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": int(gone.stdout)}))
    code = (
        "import os, time\n"
        "from pathlib import Path\n"
        "from equifast._io import FolderLock\n"
        "read = FolderLock.holder\n"
        "def slow(self):\n"
        "    found = read(self)\n"
        "    time.sleep(0.5)\n"
        "    return found\n"
        "FolderLock.holder = slow\n"
        f"Path({str(ready)!r}, str(os.getpid())).touch()\n"  # both imported: they start at once
        f"while len(list(Path({str(ready)!r}).iterdir())) < 2:\n"
        "    time.sleep(0.001)\n"
        f"lock = FolderLock({str(folder)!r}, '.equifast-measure.lock', 'x')\n"
        "try:\n"
        "    lock.acquire()\n"
        "except BlockingIOError:\n"
        "    print('refused')\n"
        "else:\n"
        "    print('holds', flush=True)\n"
        "    time.sleep(3)\n"
        "    lock.release()\n")
    runs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [run.communicate(timeout=120) for run in runs]
    assert all(run.returncode == 0 for run in runs), [err for _, err in outs]
    assert sorted(out.strip() for out, _ in outs) == ["holds", "refused"]
    assert not lock.exists()  # released by its holder


def test_a_lock_released_and_taken_while_it_is_read_is_not_deleted(tmp_path, monkeypatch):
    # a lock found at creation, then released by its holder before it was read, was read as
    # missing: the acquirer deleted whatever lock was there by then, one another process had
    # just taken (outside the folder's lock), and both went on writing to the folder
    from equifast._io import FolderLock

    folder = tmp_path / "out"
    folder.mkdir()
    lock = FolderLock(folder, ".equifast-measure.lock", "measurement")
    lock.path.write_text("{}")  # a holder's, at the moment this process tries to create it
    read, calls = FolderLock.holder, []

    def released_then_taken(self):
        calls.append(1)
        if len(calls) == 1:
            self.path.unlink()  # its holder releases it
            found = read(self)
            self.path.write_text("")  # and another process takes it, starting
            return found
        return read(self)
    monkeypatch.setattr(FolderLock, "holder", released_then_taken)
    with pytest.raises(BlockingIOError, match="a measurement starting holds"):
        lock.acquire()
    assert lock.path.read_text() == ""  # the other's lock, kept


def test_a_folder_another_command_is_writing_into_is_refused_by_the_others(tmp_path):
    # a study, a training run or a sweep started in a folder where `equifast measure` ran took it
    # as empty (its lock left out as the writer's own): the measurement then committed its
    # figure.png over the study's, or deleted its shifts.png
    import json
    import socket
    import subprocess
    import sys

    from equifast._io import check_own_folder
    from equifast.distributed.store import ResultStore
    from equifast.training.studies import _claim_folder
    from equifast.training.trainer import run_lock

    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    callers = {"study": lambda p: _claim_folder(str(p), "objective-fashion"),
               "train": lambda p: run_lock(str(p)),
               "sweep": lambda p: ResultStore(p).check_folder()}
    try:
        for name, call in callers.items():
            out = tmp_path / name
            out.mkdir()
            (out / ".equifast-measure.lock").write_text(
                json.dumps({"host": socket.gethostname(), "pid": live.pid}))
            with pytest.raises(BlockingIOError, match=rf"no other `equifast measure` writing to "
                                                      rf"'.*{name}', but pid {live.pid} "):
                call(out)
            assert [p.name for p in out.iterdir()] == [".equifast-measure.lock"]  # nothing written
        # a measurement's own lock is left to its FolderLock
        assert check_own_folder(tmp_path / "study", ["report.meta.json"], "an output", "--out",
                                lock=".equifast-measure.lock") == tmp_path / "study"
    finally:
        live.kill()
        live.wait()
    for name, call in callers.items():  # its process gone: the lock is stale, the folder empty
        call(tmp_path / name)
    assert (tmp_path / "study" / "study.json").is_file()


@pytest.mark.skipif(not os.path.isfile("/proc/self/stat"), reason="process start times from /proc")
def test_a_lock_whose_process_id_another_process_has_since_is_taken_over(tmp_path):
    # the writer killed, its process id was reused (after a reboot, or by a later process) and
    # the lock was held by that unrelated process: every run was refused until it was deleted
    import json
    import socket
    import subprocess
    import sys
    import time

    from equifast._io import FolderLock

    lock = FolderLock(tmp_path, ".equifast-measure.lock", "`equifast measure`")
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        before, after = time.time() - 3600, time.time() + 60  # written before it started, or after
        lock.path.write_text(json.dumps({"host": socket.gethostname(), "pid": other.pid,
                                         "since": after}))
        with pytest.raises(BlockingIOError, match=rf"but pid {other.pid} on "):
            lock.acquire()  # its holder, as far as can be told
        lock.path.write_text(json.dumps({"host": socket.gethostname(), "pid": other.pid,
                                         "since": before}))
        assert lock.acquire()
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
        lock.release()
    finally:
        other.kill()
        other.wait()
    assert not lock.path.exists()


@pytest.mark.skipif(not os.path.isfile("/proc/self/stat"), reason="process start times from /proc")
def test_a_lock_names_its_process_by_its_start_not_by_the_wall_clock(tmp_path):
    # a lock told its holder by the wall clock alone: a clock stepped forward while it was held
    # made the live holder look younger than its lock, and the lock stale (two writers)
    import json
    import socket
    import subprocess
    import sys

    from equifast._io import FolderLock, start_ticks

    lock = FolderLock(tmp_path, ".equifast-measure.lock", "`equifast measure`")
    assert lock.acquire()
    written = json.loads(lock.path.read_text())
    assert written["started"] == start_ticks(os.getpid()) is not None
    lock.release()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        mine = start_ticks(other.pid)
        for since in (0.0, 1e12):  # whatever the clock said: the start decides
            lock.path.write_text(json.dumps({"host": socket.gethostname(), "pid": other.pid,
                                             "since": since, "started": mine}))
            with pytest.raises(BlockingIOError, match=rf"but pid {other.pid} on "):
                lock.acquire()
        # another start under that id: another process, the lock's holder gone
        lock.path.write_text(json.dumps({"host": socket.gethostname(), "pid": other.pid,
                                         "since": 1e12, "started": mine - 1}))
        assert lock.acquire()
        lock.release()
    finally:
        other.kill()
        other.wait()


@pytest.mark.skipif(not os.path.isfile("/proc/self/stat"), reason="process start times from /proc")
def test_a_lock_an_earlier_process_of_this_pid_left_is_taken_over_not_taken_as_held(tmp_path):
    # a container restarted has the host name and the pid of the killed one: its lock was taken
    # as this process's own (acquire: False, the file left as it was), and another process,
    # told by the lock's start that its holder was gone, took it over too: two writers
    import json
    import socket
    import subprocess
    import sys
    import time

    from equifast._io import FolderLock, start_ticks

    lock = FolderLock(tmp_path, ".equifast-train.lock", "training")
    mine = start_ticks(os.getpid())
    for left in ({"started": mine - 1, "since": time.time()},  # this version's
                 {"since": time.time() - 3600}):  # an older version's (no start), before ours
        lock.path.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), **left}))
        assert lock.holder()[0] == "stale"
        assert lock.acquire()  # taken over: rewritten with this process's start
        assert json.loads(lock.path.read_text())["started"] == mine
        seen = subprocess.run(
            [sys.executable, "-c", "import sys; from equifast._io import FolderLock; "
             "print(FolderLock(sys.argv[1], '.equifast-train.lock', 'training').holder()[0])",
             str(tmp_path)], capture_output=True, text=True, check=True)
        assert seen.stdout.strip() == "another"  # this live process, to any other
        assert lock.acquire() is False  # held: by this process
        lock.release()
        assert not lock.path.exists()
