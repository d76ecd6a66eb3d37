"""Studies as sets of independent shards, each written atomically, resumable, local or on Ray.

A study's output directory holds ``manifest.json`` (the study's name and exact settings) and
``shards/<key>.json`` (one file per finished shard: its rows and the settings' fingerprint).
Running the same study again skips finished shards; a directory holding another study, or the
same study under other settings, is refused rather than mixed in. Files are written to a
temporary name and renamed, so an interrupted run never leaves a half-written result.

Executors: ``"local"`` runs shards one after another in this process; ``"ray"`` submits them as
Ray tasks (``pip install manifold-mixup[ray]``) to the cluster at ``address`` (None starts a
local Ray instance). Worker functions must be importable top-level functions.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import socket
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

__all__ = ["Shard", "ShardStore", "StudyMismatchError", "run_shards", "write_atomic", "fingerprint"]


class StudyMismatchError(RuntimeError):
    """The output directory holds results of another study or of other settings."""


@dataclass(frozen=True)
class Shard:
    """One unit of work: ``key`` names its result file; ``payload`` (JSON-able) is the worker's argument."""

    key: str
    payload: dict


def fingerprint(settings: dict) -> str:
    """A short, stable hash of JSON-able settings."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# the process's umask, read once (reading it means setting it): files written atomically get the
# permissions a plain ``open(path, "w")`` would give them, not ``mkstemp``'s private 0600
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same directory and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _versions() -> dict:
    import numpy
    import torch

    from . import __version__

    return {"manifold_mixup": __version__, "torch": torch.__version__, "numpy": numpy.__version__, "python": platform.python_version()}


class ShardStore:
    """The results directory of one study under one set of settings."""

    def __init__(self, out_dir: str | os.PathLike, study: str, settings: dict) -> None:
        self.dir = Path(out_dir)
        self.study = study
        self.settings = settings
        self.fingerprint = fingerprint(settings)
        manifest = self.dir / "manifest.json"
        if manifest.exists():
            old = json.loads(manifest.read_text())
            if old.get("study") != study:
                raise StudyMismatchError(
                    f"{self.dir} holds results of the study {old.get('study')!r}, not {study!r}: choose another --out"
                )
            if old.get("fingerprint") != self.fingerprint:
                diff = sorted(k for k in set(old.get("settings", {})) | set(settings) if old.get("settings", {}).get(k) != settings.get(k))
                raise StudyMismatchError(
                    f"{self.dir} holds {study!r} results under other settings (differing: {diff}); "
                    "rerun with the same settings to resume, or choose another --out"
                )
        elif self.dir.exists() and any(self.dir.iterdir()):
            raise StudyMismatchError(f"{self.dir} is not empty and holds no study manifest: choose another --out")
        else:
            write_atomic(manifest, json.dumps(
                {"study": study, "fingerprint": self.fingerprint, "settings": settings, "versions": _versions()},
                indent=2, sort_keys=True,
            ))
        (self.dir / "shards").mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        return self.dir / "shards" / f"{key}.json"

    def done(self, key: str) -> bool:
        return self.path(key).exists()

    def save(self, key: str, rows: list[dict]) -> None:
        write_atomic(self.path(key), json.dumps({"key": key, "fingerprint": self.fingerprint, "rows": rows}))

    def load(self, key: str) -> list[dict]:
        data = json.loads(self.path(key).read_text())
        if data.get("fingerprint") != self.fingerprint:
            raise StudyMismatchError(f"shard {self.path(key)} was written under other settings; remove it or choose another --out")
        return data["rows"]

    def rows(self, shards: Sequence[Shard]) -> list[dict]:
        """All rows, in shard order (every shard must be finished)."""
        return [row for s in shards for row in self.load(s.key)]


def _check_address(address: str) -> None:
    """Fail fast, with a clear message, when a Ray head at host:port cannot be reached."""
    if address in ("auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--address must be 'host:port', 'ray://host:port', 'auto' or 'local'; got {address!r}")
    try:
        with socket.create_connection((host, int(port)), timeout=5):
            pass
    except (OSError, ValueError) as e:
        raise ConnectionError(f"cannot reach the Ray cluster at --address {address!r}: {e}") from None


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
) -> list[dict]:
    """Run every unfinished shard through ``worker(payload) -> rows``, save each as it finishes,
    and return all rows in shard order. ``gpus_per_task``: GPUs Ray reserves for each task (Ray
    hides the GPUs from tasks that reserve none)."""
    if executor not in ("local", "ray"):
        raise ValueError(f"executor must be 'local' or 'ray'; got {executor!r}")
    if address is not None and executor != "ray":
        raise ValueError(f"--address {address!r} is only used with --executor ray")
    keys = [s.key for s in shards]
    if len(set(keys)) != len(keys):
        raise ValueError("shard keys must be unique")
    pending = [s for s in shards if not store.done(s.key)]
    bar = tqdm(total=len(shards), initial=len(shards) - len(pending), desc=desc, unit="shard", disable=not progress, smoothing=0.1)
    try:
        if executor == "local":
            for s in pending:
                store.save(s.key, worker(s.payload))
                bar.update(1)
        else:
            _run_ray(store, pending, worker, address, bar, gpus_per_task)
    finally:
        bar.close()
    return store.rows(shards)


def _call_single_threaded(worker: Callable[[dict], list[dict]], payload: dict) -> list[dict]:
    """Run a shard in a Ray worker with one torch thread: Ray gives each task one CPU, and
    several multi-threaded workers on the same cores stall each other's parallel ops."""
    import torch

    torch.set_num_threads(1)
    return worker(payload)


def _run_ray(store: ShardStore, pending: Sequence[Shard], worker: Callable, address: str | None, bar: Any,
             gpus_per_task: float = 0) -> None:
    try:
        import ray
    except ImportError:
        raise ImportError("the ray executor needs Ray: pip install 'manifold-mixup[ray]'") from None
    if address is not None:
        _check_address(address)
    started = False
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        started = True
    try:
        remote = ray.remote(num_cpus=1, num_gpus=gpus_per_task)(_call_single_threaded)
        futures = {remote.remote(worker, s.payload): s for s in pending}
        while futures:
            ready, _ = ray.wait(list(futures), num_returns=1)
            for ref in ready:
                s = futures.pop(ref)
                store.save(s.key, ray.get(ref))
                bar.update(1)
    finally:
        if started:
            ray.shutdown()
