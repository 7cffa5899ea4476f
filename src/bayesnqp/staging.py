"""Output that is never half-written: a hidden staging folder, an atomic swap, stale leftovers cleaned up,
and signals (Ctrl-C, SIGTERM) turned into a prompt, clean stop.

A run builds its report in ``.<out>.partial-<pid>`` beside the output folder. At the end the previous
output is renamed to ``.<out>.old-<pid>``, the staging folder renamed to ``<out>`` and the old one
removed: each step is one rename, so at any instant either the previous output or the new one is
complete. A process killed outright (SIGKILL, power loss) leaves its staging folder behind; the next run
removes the folders of processes that no longer exist, and puts an orphaned ``.old-<pid>`` back in place
when the kill fell between the two renames.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# How long the main thread gets to unwind after a signal before the watchdog cleans up and exits. Native
# code (a compiler, a sampler that swallows KeyboardInterrupt) can keep the interpreter from reacting.
GRACE_SECONDS = 3.0
INTERRUPT_MESSAGE = "interrupted: the run stopped and nothing was written (any previous output is unchanged)"


class Interrupted(KeyboardInterrupt):
    """The run was stopped by a signal; ``exit_code`` is the shell convention 128 + signal number."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def staging_path(out: Path, pid: int | None = None) -> Path:
    return out.parent / f".{out.name}.partial-{os.getpid() if pid is None else pid}"


def _old_path(out: Path, pid: int | None = None) -> Path:
    return out.parent / f".{out.name}.old-{os.getpid() if pid is None else pid}"


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (a process of another user counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:  # pragma: no cover - platforms without signal 0
        return True
    return True


OWNER_FILE = ".owner"  # inside a staging folder: the host that runs it (removed before the swap)


def mark_owner(staging: Path) -> None:
    """Record the host of the run in its staging folder: on a shared file system a process id says
    nothing about a run on another machine, whose folder must not be taken for a dead one."""
    (staging / OWNER_FILE).write_text(socket.gethostname() + "\n", encoding="utf-8")


def _other_host(folder: Path) -> bool:
    try:
        host = (folder / OWNER_FILE).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return False
    return bool(host) and host != socket.gethostname()


def clean_stale(out: Path) -> list[Path]:
    """Remove the staging folders of dead processes beside ``out``; restore an orphaned previous output.

    Folders of live processes (a concurrent run into the same folder) and of runs on another host are
    left alone. Returns what was removed or restored.
    """
    parent = out.parent
    if not parent.is_dir():
        return []
    pattern = re.compile(rf"^\.{re.escape(out.name)}\.(partial|old)-(\d+)$")
    touched: list[Path] = []
    for entry in sorted(parent.iterdir()):
        match = pattern.match(entry.name)
        if not match or not entry.is_dir():
            continue
        pid = int(match.group(2))
        if pid == os.getpid() or pid_alive(pid) or _other_host(entry):
            continue
        if match.group(1) == "old" and not out.exists():
            entry.rename(out)  # killed between the two renames of the swap: the previous output comes back
        else:
            shutil.rmtree(entry, ignore_errors=True)
        touched.append(entry)
    return touched


def replace_folder(staging: Path, out: Path) -> None:
    """Move ``staging`` into place as ``out``, replacing a previous ``out`` (two renames, then a delete)."""
    old = _old_path(out)
    (staging / OWNER_FILE).unlink(missing_ok=True)
    if out.exists():
        out.rename(old)
    staging.rename(out)
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)


TEMP_PREFIX = "bayesnqp-run-"


@contextmanager
def private_tempdir() -> Iterator[Path]:
    """Point ``tempfile`` at a folder of this run inside the system temp folder, removed at the end.

    PyTensor writes the source of every function it generates to a named temporary file and never
    deletes it (tracebacks read it); without this a run leaves dozens of files in $TMPDIR. The folder of
    a run killed outright is removed by the next run (:func:`clean_stale_tempdirs`).
    """
    clean_stale_tempdirs()
    previous = tempfile.tempdir
    folder = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-"))
    tempfile.tempdir = str(folder)
    try:
        yield folder
    finally:
        tempfile.tempdir = previous
        shutil.rmtree(folder, ignore_errors=True)


def clean_stale_tempdirs() -> list[Path]:
    """Remove temp folders of earlier runs whose process no longer exists."""
    base = Path(tempfile.gettempdir())
    pattern = re.compile(rf"^{re.escape(TEMP_PREFIX)}(\d+)-")
    removed = []
    try:
        entries = sorted(base.iterdir())
    except OSError:
        return []
    for entry in entries:
        match = pattern.match(entry.name)
        if match and entry.is_dir() and int(match.group(1)) != os.getpid() and not pid_alive(int(match.group(1))):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


class InterruptGuard:
    """While active (main thread only): SIGINT/SIGTERM raise :class:`Interrupted` once; the run's cleanup
    then removes the staging folder. If the main thread has not finished within ``GRACE_SECONDS`` (stuck
    in native code), a watchdog thread, woken through the signal wakeup fd, removes the staging folder,
    prints the one-line message and exits the process. ``critical()`` defers the exception across the
    final swap so the output is never left between renames by a Ctrl-C."""

    def __init__(self, staging: Path):
        self.staging = staging
        self.signum: int | None = None
        self._critical = False
        self._done = threading.Event()

    def _handler(self, signum: int, frame: object) -> None:
        if self.signum is not None or self._done.is_set():
            return  # a second Ctrl-C must not interrupt the cleanup of the first; a finished run stands
        self.signum = signum
        if not self._critical:
            raise Interrupted(signum)

    def check(self) -> None:
        """Raise if a signal arrived while someone swallowed the KeyboardInterrupt (nutpie does)."""
        if self.signum is not None and not self._critical:
            raise Interrupted(self.signum)

    @contextmanager
    def critical(self) -> Iterator[None]:
        self._critical = True
        try:
            yield
        finally:
            self._critical = False

    def _watch(self, read_fd: int) -> None:
        while True:
            try:
                data = os.read(read_fd, 1)
            except OSError:
                return
            if not data:
                return
            signum = data[0]
            if signum not in (signal.SIGINT, signal.SIGTERM):
                continue
            if self._done.wait(GRACE_SECONDS):
                return
            while self._critical and not self._done.wait(0.1):
                pass  # the swap takes milliseconds; let it finish
            if self._done.is_set():
                return
            shutil.rmtree(self.staging, ignore_errors=True)
            if tempfile.tempdir and Path(tempfile.tempdir).name.startswith(TEMP_PREFIX):
                shutil.rmtree(tempfile.tempdir, ignore_errors=True)
            try:
                sys.stderr.write(INTERRUPT_MESSAGE + "\n")
                sys.stderr.flush()
            finally:
                os._exit(128 + signum)

    @contextmanager
    def active(self) -> Iterator["InterruptGuard"]:
        if threading.current_thread() is not threading.main_thread():
            yield self  # signals can only be handled on the main thread; plain KeyboardInterrupt applies
            return
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        # A signal the parent chose to ignore (nohup, a background job) stays ignored.
        previous = {s: signal.signal(s, self._handler) for s in (signal.SIGINT, signal.SIGTERM)
                    if signal.getsignal(s) is not signal.SIG_IGN}
        previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        watcher = threading.Thread(target=self._watch, args=(read_fd,), name="bayesnqp-interrupt", daemon=True)
        watcher.start()
        try:
            yield self
        finally:
            self._done.set()
            signal.set_wakeup_fd(previous_fd)
            for s, h in previous.items():
                signal.signal(s, h)
            os.close(write_fd)
            watcher.join(timeout=1.0)
            os.close(read_fd)
