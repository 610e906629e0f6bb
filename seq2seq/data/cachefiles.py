"""Writing into the data cache safely while other processes may be doing the same.

Any number of processes (two trainings started together, the ranks of a run on several
nodes) may fill one cache folder at once. Each cache entry is built under a file lock
(filelock; the operating system releases it when a process dies, so a killed process
leaves no stale lock), and every file is written under a name of its own (pid and a
random part) and then renamed into place, so a reader sees a whole file or none. A
process that finds the lock taken waits, then reads what the other one built.
"""
from __future__ import annotations

import logging
import os
import secrets
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from filelock import FileLock, Timeout

log = logging.getLogger(__name__)

TMP_SUFFIX = ".tmp"


@contextmanager
def cache_lock(lock_path: Path, what: str) -> Iterator[None]:
    """Hold the file lock at lock_path; log (INFO) when another process holds it and this one waits."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(lock_path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("waiting for another process to finish %s (lock %s)", what, lock_path)
        start = time.monotonic()
        lock.acquire()
        log.info("the other process finished %s after %.1fs waiting", what, time.monotonic() - start)
    try:
        yield
    finally:
        lock.release()


def temp_path(path: Path) -> Path:
    """A name beside path that no other process uses: .NAME.PID.RANDOM.tmp (hidden, so never taken for a result)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{TMP_SUFFIX}")


def write_atomic(path: Path, write: Callable[[Path], object]) -> None:
    """write(tmp) into a temporary name of this process's own, then rename it to path in one step."""
    tmp = temp_path(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def remove_stale_temps(folder: Path, *names: str) -> None:
    """Remove the temporary files or folders that a killed process left for names in folder.

    Call it only while holding the lock that guards names: then no live process is writing them.
    """
    if not folder.is_dir():
        return
    for entry in folder.iterdir():
        if not entry.name.endswith(TMP_SUFFIX):
            continue
        if any(entry.name.startswith(f".{name}.") or entry.name == Path(name).stem + TMP_SUFFIX for name in names):
            log.info("removing %s, left by an interrupted run", entry)
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
