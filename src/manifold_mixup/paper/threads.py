"""Thread fitting: before each shard, torch's threads are fitted to the cores no other task is
using (``MANIFOLD_MIXUP_THREADS=auto``), since two multi-threaded torch processes on the same cores
stall each other at every parallel op; a number fixes them, an empty value leaves torch alone.
"""

from __future__ import annotations

import os
from pathlib import Path

from .files import clipped

__all__ = ["THREADS_ENV", "fit_threads_to_load", "thread_setting", "thread_policy"]


THREADS_ENV = "MANIFOLD_MIXUP_THREADS"


def _own_running() -> int:
    """This process's threads in the running state (Linux /proc)."""
    own = 0
    for task in Path("/proc/self/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:  # a thread that just ended
            continue
        own += stat[stat.rindex(")") + 2] == "R"
    return own


def _runnable_others() -> int:
    """Runnable tasks on the machine, less this process's own running threads (Linux /proc;
    0 where it cannot be read). Our own threads are counted just before and just after the
    machine's count and the larger count is taken: a worker thread that stops spinning in between
    must not look like another process."""
    try:
        before = _own_running()
        total = int(Path("/proc/loadavg").read_text().split()[3].split("/")[0])
        own = max(before, _own_running())
    except (OSError, ValueError, IndexError):
        return 0
    return max(0, total - own)


def fit_threads_to_load(max_threads: int) -> int:
    """Set torch's intra-op threads to the cores no other task is using (at least 1, at most
    ``max_threads``) and return the number. Two multi-threaded torch processes on the same cores
    stall each other at every parallel op (a run beside a copy of itself took 10-20x its time
    alone); with one thread each they share the cores at the cost of parallelism only."""
    import time

    import torch

    cores = _cores()
    others = []
    for i in range(5):  # the most of five looks over 20 ms: another study's threads, stalled at a
        if i:           # barrier, sleep part of the time, and the least look would miss them (two
            time.sleep(0.005)  # copies then kept 2 threads each and ran 25x slower than alone)
        others.append(_runnable_others())
    threads = max(1, min(max_threads, cores - max(others)))
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def thread_setting() -> int | str | None:
    """``MANIFOLD_MIXUP_THREADS``, checked (nothing is set): None when unset or empty (torch's
    threads left alone), 'auto' (fit them to the load before each shard, up to torch's setting at
    the start) or a number of threads from 1 to the cores this process may use. Anything else is
    a ValueError naming the variable, raised before any folder or file is made."""
    raw = os.environ.get(THREADS_ENV, "")
    value = raw.strip().lower()
    if not value:
        return None
    if value == "auto":
        return "auto"
    cores = _cores()
    if not (value.isascii() and value.isdigit() and len(value) <= 6 and 1 <= int(value) <= cores):
        raise ValueError(f"{THREADS_ENV} must be 'auto' or a number of threads from 1 to {cores} (the cores this "
                         f"process may use); got {clipped(raw)}")
    return int(value)


def thread_policy() -> int | None:
    """The checked ``MANIFOLD_MIXUP_THREADS`` applied: None (leave torch's threads alone), a
    negative number (adapt, up to that many) or a number of threads (set now)."""
    value = thread_setting()
    if value is None:
        return None
    import torch

    if value == "auto":
        return -torch.get_num_threads()  # negative: adapt, up to this many
    torch.set_num_threads(value)
    return value
