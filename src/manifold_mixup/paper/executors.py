"""Executors: running a study's shards. ``"local"`` runs them one after another in this process,
or ``workers`` at a time in local processes; ``"ray"`` submits them as Ray tasks (``pip install
manifold-mixup[ray]``) to the cluster at ``address`` (None starts a local Ray instance). Worker
functions must be importable top-level functions. ``run_study`` opens the store, runs what is not
finished and writes the study's outputs
while it still holds the folder's lock.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Sequence
from typing import Any

from ..checks import check_int
from .files import StudyMismatchError, torch_threads
from .store import Shard, ShardList, ShardStore
from .threads import THREADS_ENV, fit_threads_to_load, thread_policy, thread_setting

__all__ = ["run_shards", "run_study", "check_executor", "check_workers"]


def _check_address(address: str, timeout: float = 3.0) -> None:
    """Fail fast, in one line, when no Ray head answers at host:port: the port must accept a
    TCP connection and answer as a gRPC (HTTP/2) server, which a Ray head's GCS is."""
    if address in ("auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--address must be 'host:port', 'ray://host:port', 'auto' or 'local'; got {address!r}")
    try:
        conn = socket.create_connection((host, int(port)), timeout=timeout)
    except (OSError, ValueError) as e:
        raise ConnectionError(f"cannot reach the Ray cluster at --address {address!r}: {e}") from None
    head = b""
    with conn:
        try:
            # HTTP/2 client preface and an empty SETTINGS frame: an HTTP/2 server answers with
            # a SETTINGS frame (type 4) of its own; anything else is not a Ray head
            conn.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            while len(head) < 9:
                chunk = conn.recv(9 - len(head))
                if not chunk:
                    break
                head += chunk
        except OSError:
            pass
    if len(head) < 9 or head[3] != 4:
        raise ConnectionError(f"--address {address!r} accepts connections but is not a Ray head (no gRPC answer within "
                              f"{timeout:g} s); give the address of the head node's GCS port (default 6379)")


def _unique_keys(shards: Sequence[Shard]) -> None:
    if isinstance(shards, ShardList):  # made by index: unique by construction
        return
    seen, dup = set(), []
    for s in shards:
        if s.key in seen and s.key not in dup:
            dup.append(s.key)
        seen.add(s.key)
    if dup:
        raise ValueError(f"shard keys must be unique; repeated: {dup[:5]}")


def _refuse_other_threads(store: ShardStore, shards: Sequence[Shard], threads: int | None) -> None:
    """For a study whose numbers depend on the thread count: its finished shards must have been
    computed with ``threads`` threads, or a resume would mix two sets of numbers."""
    other = {}
    for s in shards:
        t = store.threads_of(s.key, s.payload)
        if t is not None and t != threads:
            other.setdefault(t, []).append(s.key)
    if other:
        t, keys = next(iter(other.items()))
        raise StudyMismatchError(
            f"{store.dir}: {len(keys)} finished shard(s) (e.g. {keys[0]}) were computed with {t} torch thread(s) and "
            f"this run has {threads}; this study's numbers depend on the thread count, so a resume would mix them: "
            f"rerun with {THREADS_ENV}={t}, or choose another --out")


def run_shards(
    store: ShardStore,
    shards: Sequence[Shard],
    worker: Callable[[dict], list[dict]],
    *,
    executor: str = "local",
    address: str | None = None,
    progress: bool = True,
    desc: str = "shards",
    gpus_per_task: float = 0,
    adapt_threads: bool = True,
    shard_threads: int | None = None,
) -> list[dict]:
    """Run every unfinished shard through ``worker(payload) -> rows``, save each as it finishes,
    and return all rows in shard order. Shards are read one at a time from ``shards`` (a list or
    a :class:`ShardList`), so nothing grows with their number before they run.
    ``gpus_per_task``: GPUs Ray reserves for each task (Ray hides the GPUs from tasks that reserve none).
    ``adapt_threads``: False for studies whose numbers depend on the thread count (the ConfMix
    study's convolutions): ``MANIFOLD_MIXUP_THREADS=auto`` then leaves torch's threads as they are,
    so that a rerun gives the same numbers whatever the load (a number still sets them), and a
    resume with another thread count than the finished shards' is refused (each shard records it).
    ``shard_threads``: the torch threads each shard runs with when not this process's (a ``worker``
    that hands the shards to a pool of processes), recorded and compared in their place."""
    check_executor(executor, address)
    _unique_keys(shards)
    from tqdm.auto import tqdm

    policy = thread_policy() if executor == "local" else None
    if policy is not None and policy < 0 and not adapt_threads:
        policy = None
    if not adapt_threads:  # the study's numbers depend on torch's threads: they are recorded and compared
        threads = 1
        if executor == "local":
            import torch

            threads = shard_threads or torch.get_num_threads()
        _refuse_other_threads(store, shards, threads)
    bar = tqdm(total=len(shards), desc=desc, unit="shard", disable=not progress, smoothing=0.1)
    if policy is not None and policy < 0:
        import torch
    try:
        if executor == "local":
            for s in shards:
                if not store.done(s.key, s.payload):
                    if policy is not None and policy < 0:
                        fit_threads_to_load(-policy)
                    rows = worker(s.payload)
                    store.save(s.key, rows, s.payload, threads=shard_threads or torch_threads())
                bar.update(1)
        else:
            _run_ray(store, shards, worker, address, bar, gpus_per_task)
    finally:
        bar.close()
        if policy is not None and policy < 0:
            torch.set_num_threads(-policy)  # as it was: the next study starts from the same ceiling
    return store.rows(shards)


def run_study(out_dir: str | os.PathLike, study: str, settings: dict, shards: Sequence[Shard],
              worker: Callable[[dict], list[dict]], info: dict | None = None, *,
              check: Callable[[dict, list], str | None] | None = None,
              finish: Callable[[list[dict]], Any] | None = None, workers: int = 1, **kwargs) -> Any:
    """Open the study's :class:`ShardStore` (locking ``out_dir``), run its shards through
    :func:`run_shards` (``kwargs``: executor, address, progress, desc, gpus_per_task, adapt_threads, shard_threads)
    and return all rows, or ``finish(rows)`` when given: it writes the study's outputs while the
    lock is still held, so that no second run can start before the last output is written.
    ``workers`` > 1 (local executor only) computes that many shards at once in local processes
    (spawned: CUDA cannot be used in a forked child), torch's threads divided among them.
    The executor, the address, ``workers`` and ``MANIFOLD_MIXUP_THREADS`` are checked before anything is
    written; ``info`` (what follows from the settings, e.g. a derived batch size) goes into the
    manifest; ``check`` is the study's schema of a shard's rows (see :class:`ShardStore`)."""
    check_executor(kwargs.get("executor", "local"), kwargs.get("address"))
    check_workers(workers, kwargs.get("executor", "local"))
    thread_setting()
    with ShardStore(out_dir, study, settings, info, check=check) as store:
        if workers == 1:
            rows = run_shards(store, shards, worker, **kwargs)
        else:
            rows = _run_in_processes(store, shards, worker, workers, **kwargs)
        return rows if finish is None else finish(rows)


class _Lookahead:
    """The worker when ``workers`` > 1: :func:`run_shards` asks for the unfinished shards in order,
    one at a time; each answer comes from a pool of processes that is already computing the next ones."""

    def __init__(self, pool, worker, shards: Sequence[Shard], done: Callable[[str], bool], ahead: int) -> None:
        self.pool, self.worker, self.shards, self.done, self.ahead = pool, worker, shards, done, ahead
        self.running: dict[int, Any] = {}
        self.next = 0

    def __call__(self, payload: dict) -> list[dict]:
        i = next(j for j in range(self.next, len(self.shards)) if self.shards[j].payload == payload)
        self.next = i + 1
        for j in range(i, min(i + self.ahead, len(self.shards))):
            if j not in self.running and (j == i or not self.done(self.shards[j].key)):
                self.running[j] = self.pool.apply_async(self.worker, (self.shards[j].payload,))
        return self.running.pop(i).get()


def _set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _run_in_processes(store: ShardStore, shards: Sequence[Shard], worker, workers: int, **kwargs) -> list[dict]:
    import multiprocessing

    import torch

    threads = max(1, torch.get_num_threads() // workers)
    pool = multiprocessing.get_context("spawn").Pool(workers, initializer=_set_threads, initargs=(threads,))
    try:
        ahead = _Lookahead(pool, worker, shards, lambda key: store.path(key).exists(), 2 * workers)
        rows = run_shards(store, shards, ahead, shard_threads=threads, **kwargs)
        pool.close()
        return rows
    finally:
        pool.terminate()  # (after close: the workers have nothing left; on an error: stop them now)
        pool.join()


def check_workers(workers: int, executor: str = "local") -> None:
    """``workers`` local processes (1 to 256), which only the local executor has."""
    check_int("workers", workers, 1, 256)
    if workers > 1 and executor != "local":
        raise ValueError(f"workers = {workers} runs shards as local processes; it cannot be combined with executor "
                         f"{executor!r} (give one or the other)")


def check_executor(executor: str, address: str | None) -> None:
    """Refuse, before any work, an unknown executor, an address without Ray, Ray missing, and an
    address where no Ray head answers (one line, within seconds)."""
    if executor not in ("local", "ray"):
        raise ValueError(f"executor must be 'local' or 'ray'; got {executor!r}")
    if address is not None and executor != "ray":
        raise ValueError(f"--address {address!r} is only used with --executor ray")
    if executor == "ray":
        import importlib.util

        if importlib.util.find_spec("ray") is None:
            raise ImportError("the ray executor needs Ray: pip install 'manifold-mixup[ray]'")
        if address is not None:
            _check_address(address)


def _call_single_threaded(worker: Callable[[dict], list[dict]], payload: dict) -> list[dict]:
    """Run a shard in a Ray worker with one torch thread: Ray gives each task one CPU, and
    several multi-threaded workers on the same cores stall each other's parallel ops."""
    import torch

    torch.set_num_threads(1)
    return worker(payload)


def _run_ray(store: ShardStore, shards: Sequence[Shard], worker: Callable, address: str | None, bar: Any,
             gpus_per_task: float = 0) -> None:
    try:
        import ray
    except ImportError:
        raise ImportError("the ray executor needs Ray: pip install 'manifold-mixup[ray]'") from None
    started = False
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        started = True
    try:
        remote = ray.remote(num_cpus=1, num_gpus=gpus_per_task)(_call_single_threaded)
        futures = {}
        for s in shards:
            if store.done(s.key, s.payload):
                bar.update(1)
            else:
                futures[remote.remote(worker, s.payload)] = s
        while futures:
            ready, _ = ray.wait(list(futures), num_returns=1)
            for ref in ready:
                s = futures.pop(ref)
                store.save(s.key, ray.get(ref), s.payload, threads=1)
                bar.update(1)
    finally:
        if started:
            ray.shutdown()
