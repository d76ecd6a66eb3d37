"""Studies as sets of independent shards, each written atomically, resumable, local or on Ray.

A study's output directory holds ``manifest.json`` (the study's name, exact settings, versions
and the machines it ran on) and ``shards/<key>.json`` (one file per finished shard: its key,
the settings' fingerprint and its rows). Running the same study again skips finished shards; a
directory holding another study, or the same study under other settings, is refused rather than
mixed in. Every file is written to a temporary name and renamed, so an interrupted run never
leaves a half-written result; temporary files left by a killed run are removed on the next.

One study per directory at a time: a :class:`ShardStore` holds a lock on ``<out>/.lock`` (an
OS-level lock, released when the process ends, however it ends) while it is open; a second run
into the same directory is refused with :class:`StudyInUseError`. A shard file that cannot be
read, or that holds another shard's key or another setting's fingerprint, is recomputed with a
warning naming it.

Executors: ``"local"`` runs shards one after another in this process; ``"ray"`` submits them as
Ray tasks (``pip install manifold-mixup[ray]``) to the cluster at ``address`` (None starts a
local Ray instance). Worker functions must be importable top-level functions.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import platform
import socket
import tempfile
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["Shard", "ShardList", "ShardStore", "StudyMismatchError", "StudyInUseError", "UnreadableFileError",
           "run_shards", "run_study", "ensure_dir", "check_executor", "write_atomic", "read_json", "fingerprint", "machine_info", "strict_json"]

LOCK_NAME = ".lock"
_TMP_SUFFIX = ".tmp"


class StudyMismatchError(RuntimeError):
    """The output directory holds results of another study or of other settings."""


class StudyInUseError(StudyMismatchError):
    """Another run holds the output directory's lock."""


class UnreadableFileError(StudyMismatchError):
    """A manifest or shard file that is not what this package wrote (truncated, edited, junk)."""


@dataclass(frozen=True)
class Shard:
    """One unit of work: ``key`` names its result file; ``payload`` (JSON-able) is the worker's argument."""

    key: str
    payload: dict


class ShardList(Sequence):
    """A sequence of ``n`` shards made on demand by ``make(i)``: a study's shards cost no memory
    before they run, however many there are."""

    def __init__(self, n: int, make: Callable[[int], Shard]) -> None:
        self._n, self._make = int(n), make

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self._make(j) for j in range(*i.indices(self._n))]
        if i < 0:
            i += self._n
        if not 0 <= i < self._n:
            raise IndexError(f"shard index {i} out of range [0, {self._n})")
        return self._make(i)


def strict_json(obj: Any, what: str, **kwargs) -> str:
    """``json.dumps`` refusing NaN and infinities (not JSON), with an error that names ``what``."""
    try:
        return json.dumps(obj, allow_nan=False, **kwargs)
    except ValueError as e:
        raise ValueError(f"{what} must hold only finite numbers (JSON has no NaN or infinity): {e}") from None


def fingerprint(settings: dict) -> str:
    """A short, stable hash of JSON-able settings."""
    text = strict_json(settings, "the study's settings", sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# the process's umask, read once (reading it means setting it): files written atomically get the
# permissions a plain ``open(path, "w")`` would give them, not ``mkstemp``'s private 0600
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def _os_error(e: OSError, path: Path, doing: str) -> OSError:
    """The same error, naming ``path`` and what was being done (for a one-line message)."""
    out = OSError(e.errno, f"{e.strerror or e} ({doing})", str(path))
    return out


def write_atomic(path: str | os.PathLike, data: str | bytes) -> None:
    """Write ``data`` (text or bytes) to ``path`` through a temporary file in the same directory,
    an fsync and a rename: readers see the old file or the whole new one, never a part.
    An OSError (disk full, read-only, permissions) names ``path`` and leaves no temporary file."""
    path = Path(path)
    if path.is_dir() or (path.exists() and not path.is_file()):  # never rename over a folder or a device
        raise OSError(errno.EISDIR if path.is_dir() else errno.EEXIST,
                      "exists and is not a regular file", str(path))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=_TMP_SUFFIX)
    except OSError as e:
        raise _os_error(e, path, "creating a file there") from None
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise _os_error(e, path, "writing it") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def ensure_dir(path: str | os.PathLike) -> Path:
    """Make ``path`` a folder (with its parents) and check that a file can be written there,
    before any work. Errors are OSErrors that name the path (an existing file, a read-only or
    full file system, no permission)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "exists and is not a folder", str(path))
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".probe.", suffix=_TMP_SUFFIX)
        os.close(fd)
        Path(probe).unlink(missing_ok=True)  # a run holding the folder may have cleaned it up already
    except OSError as e:
        raise _os_error(e, path, "preparing the output folder") from None
    return path


def read_json(path: Path, what: str) -> Any:
    """Parse a JSON file; any failure is an UnreadableFileError that names the file."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UnreadableFileError(f"{what} {path} cannot be read ({type(e).__name__}: {e})") from None


def _versions() -> dict:
    import numpy
    import torch

    try:
        own = metadata.version("manifold-mixup")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare source tree
        own = "unknown"
    return {"manifold_mixup": own, "torch": torch.__version__, "numpy": numpy.__version__,
            "python": platform.python_version()}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_info() -> dict:
    """The machine a study runs on: CPU model, cores, GPU names (when CUDA is visible), torch's
    version, build (CUDA version, CPU capability, the build configuration) and its threads at the
    start (``MANIFOLD_MIXUP_THREADS=auto``, the CLI's default, may lower them per shard under load).
    Information for the reader, not part of a study's settings: a study resumes on any machine."""
    import torch

    info = {
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "MANIFOLD_MIXUP_THREADS")
                if k in os.environ},
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if torch.cuda.is_available() else [],
        "torch_build": [line.strip() for line in torch.__config__.show().splitlines() if line.strip()],
    }
    return info


def _is_temp(p: Path) -> bool:
    return p.name.startswith(".") and p.name.endswith(_TMP_SUFFIX)


class ShardStore:
    """The results directory of one study under one set of settings, locked while open.

    Use it as a context manager (or call :meth:`close`) so that the lock is released; the OS
    releases it anyway when the process ends. Raises :class:`StudyInUseError` when another
    run holds the directory, :class:`StudyMismatchError` when it holds another study or other
    settings, :class:`UnreadableFileError` naming an unreadable manifest, and OSError naming
    the path when the directory cannot be made or written.
    """

    def __init__(self, out_dir: str | os.PathLike, study: str, settings: dict, info: dict | None = None) -> None:
        from filelock import FileLock, Timeout

        self.dir = Path(out_dir)
        self.study = study
        self.settings = settings
        self.info = info or {}
        self._columns: list[str] | None = None  # the rows' columns, from the first shard read or written
        self.fingerprint = fingerprint(settings)  # also refuses NaN / inf settings, before anything is written
        ensure_dir(self.dir)
        self._lock = FileLock(str(self.dir / LOCK_NAME), timeout=0)
        try:
            self._lock.acquire()
        except Timeout:
            raise StudyInUseError(f"{self.dir} is in use by another run (it holds the lock {self.dir / LOCK_NAME}); "
                                  "wait for it to finish or choose another --out") from None
        except OSError as e:
            raise _os_error(e, self.dir / LOCK_NAME, "locking the output folder") from None
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    def _open(self) -> None:
        self._remove_temp_files()
        manifest = self.dir / "manifest.json"
        machine = machine_info()
        if manifest.exists():
            try:
                old = read_json(manifest, "the study manifest")
                if not isinstance(old, dict) or "fingerprint" not in old:
                    raise UnreadableFileError(f"the study manifest {manifest} is not a manifest this package wrote")
            except UnreadableFileError as e:
                if not self._only_a_manifest():
                    raise UnreadableFileError(f"{e}; delete it and rerun the same command (finished shards written "
                                              "under the same settings are kept)") from None
                old = {}  # nothing else in the folder: taken over below
            if (old.get("study"), old.get("fingerprint")) != (self.study, self.fingerprint) and self._only_a_manifest():
                # a run that stopped before its first shard (a setting refused late, Ctrl-C, no memory):
                # nothing to keep, so the corrected command takes the folder over
                warnings.warn(f"{self.dir} held no finished shard of {old.get('study')!r} under its settings; "
                              "starting afresh with these", stacklevel=3)
                old = {"study": self.study, "fingerprint": self.fingerprint, "machines": []}
            if old.get("study") != self.study:
                raise StudyMismatchError(
                    f"{self.dir} holds results of the study {old.get('study')!r}, not {self.study!r}: choose another --out"
                )
            if old.get("fingerprint") != self.fingerprint:
                before = old.get("settings") if isinstance(old.get("settings"), dict) else {}
                diff = sorted(k for k in set(before) | set(self.settings) if before.get(k) != self.settings.get(k))
                raise StudyMismatchError(
                    f"{self.dir} holds {self.study!r} results under other settings (differing: {diff}); "
                    "rerun with the same settings to resume, or choose another --out"
                )
            machines = old.get("machines") if isinstance(old.get("machines"), list) else []
            if machine not in machines:  # resumed on another machine (or with other threads): say so
                self._write_manifest(machines + [machine])
        else:
            adopted = self._adoptable_shards()
            if adopted is None:
                raise StudyMismatchError(f"{self.dir} is not empty and holds no study manifest: choose another --out")
            if adopted:
                warnings.warn(f"{manifest} was missing; {adopted} finished shard(s) written under the same settings "
                              "are kept and the manifest is written again", stacklevel=3)
            self._write_manifest([machine])
        try:
            (self.dir / "shards").mkdir(exist_ok=True)
        except OSError as e:
            raise _os_error(e, self.dir / "shards", "creating the shards folder") from None

    def _write_manifest(self, machines: list[dict]) -> None:
        text = strict_json({"study": self.study, "fingerprint": self.fingerprint, "settings": self.settings,
                            "derived": self.info, "versions": _versions(), "machines": machines}, "the study manifest",
                           indent=2, sort_keys=True)
        write_atomic(self.dir / "manifest.json", text + "\n")

    def _remove_temp_files(self) -> None:
        """Temporary files of an interrupted write (we hold the lock: nobody else is writing)."""
        for folder in (self.dir, self.dir / "shards"):
            if folder.is_dir():
                for p in folder.iterdir():
                    if _is_temp(p) and p.is_file():
                        p.unlink(missing_ok=True)

    def _only_a_manifest(self) -> bool:
        """The folder holds a manifest and nothing else of value (no shard, no output)."""
        others = [p for p in self.dir.iterdir() if p.name not in (LOCK_NAME, "shards", "manifest.json")]
        shards_dir = self.dir / "shards"
        return not others and (not shards_dir.exists() or (shards_dir.is_dir() and not any(shards_dir.iterdir())))

    def _adoptable_shards(self) -> int | None:
        """With no manifest: 0 if the folder is empty (but for the lock and an empty shards
        folder), the number of shards if it holds only shards written under these settings
        (a deleted manifest), None if it holds anything else."""
        others = [p for p in self.dir.iterdir() if p.name not in (LOCK_NAME, "shards")]
        shards_dir = self.dir / "shards"
        files = sorted(shards_dir.iterdir()) if shards_dir.is_dir() else []
        if not files:
            return None if others else 0
        for p in files:
            try:
                data = read_json(p, "shard")
            except UnreadableFileError:
                continue  # recomputed later, with a warning
            if not isinstance(data, dict) or data.get("fingerprint") != self.fingerprint:
                return None
        return len(files)

    # -- the lock ----------------------------------------------------------------------------

    def close(self) -> None:
        """Release the directory's lock (the store cannot be used afterwards)."""
        lock = getattr(self, "_lock", None)
        if lock is not None and lock.is_locked:
            lock.release()

    def __enter__(self) -> "ShardStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- shards ------------------------------------------------------------------------------

    def path(self, key: str) -> Path:
        return self.dir / "shards" / f"{key}.json"

    def _problem(self, key: str, data: Any) -> str | None:
        """Why ``data`` (a parsed shard file) is not shard ``key`` of these settings, or None."""
        if not isinstance(data, dict) or not isinstance(data.get("rows"), list) or not all(
                isinstance(r, dict) for r in data["rows"]):
            return "it is not a shard file (no list of rows)"
        if data.get("key") != key:
            return f"it holds shard {data.get('key')!r}, not {key!r} (a copied or renamed file?)"
        if data.get("fingerprint") != self.fingerprint:
            return f"it was written under other settings (fingerprint {data.get('fingerprint')!r}, this study {self.fingerprint!r})"
        columns = [sorted(r) for r in data["rows"]]
        if columns and (any(c != columns[0] for c in columns) or (self._columns is not None and columns[0] != self._columns)):
            return "its rows do not have the columns of the other shards (an edited file?)"
        if columns and self._columns is None:
            self._columns = columns[0]
        return None

    def done(self, key: str) -> bool:
        """Whether shard ``key`` is finished: its file exists and holds this shard under these
        settings. A file that does not is reported by a warning naming it and counts as not done
        (it is recomputed and replaced)."""
        p = self.path(key)
        if not p.exists():
            return False
        try:
            why = self._problem(key, read_json(p, "shard"))
        except UnreadableFileError as e:
            why = "it cannot be read " + str(e).split(" cannot be read ", 1)[-1]
        if why is None:
            return True
        warnings.warn(f"shard {p}: {why}; recomputing it", stacklevel=2)
        return False

    def save(self, key: str, rows: list[dict]) -> None:
        if rows and self._columns is None:
            self._columns = sorted(rows[0])
        # rows may hold NaN (a relative risk over a zero Bayes risk): written as Python's json does
        write_atomic(self.path(key), json.dumps({"key": key, "fingerprint": self.fingerprint, "rows": rows}))

    def load(self, key: str) -> list[dict]:
        p = self.path(key)
        data = read_json(p, "shard")
        why = self._problem(key, data)
        if why is not None:
            raise UnreadableFileError(f"shard {p}: {why}; delete it and rerun the same command to recompute it")
        return data["rows"]

    def rows(self, shards: Iterable[Shard]) -> list[dict]:
        """All rows, in shard order (every shard must be finished)."""
        return [row for s in shards for row in self.load(s.key)]


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

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    others = []
    for i in range(5):  # the most of five looks over 20 ms: another study's threads, stalled at a
        if i:           # barrier, sleep part of the time, and the least look would miss them (two
            time.sleep(0.005)  # copies then kept 2 threads each and ran 25x slower than alone)
        others.append(_runnable_others())
    threads = max(1, min(max_threads, cores - max(others)))
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


def _thread_policy() -> int | None:
    """``MANIFOLD_MIXUP_THREADS``: unset (leave torch's threads alone), 'auto' (fit them to the
    load before each shard, up to torch's setting at the start) or a number of threads."""
    value = os.environ.get(THREADS_ENV, "").strip().lower()
    if not value:
        return None
    import torch

    if value == "auto":
        return -torch.get_num_threads()  # negative: adapt, up to this many
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{THREADS_ENV} must be 'auto' or a number of threads >= 1; got {value!r}")
    torch.set_num_threads(int(value))
    return int(value)


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
) -> list[dict]:
    """Run every unfinished shard through ``worker(payload) -> rows``, save each as it finishes,
    and return all rows in shard order. Shards are read one at a time from ``shards`` (a list or
    a :class:`ShardList`), so nothing grows with their number before they run.
    ``gpus_per_task``: GPUs Ray reserves for each task (Ray hides the GPUs from tasks that reserve none).
    ``adapt_threads``: False for studies whose numbers depend on the thread count (the ConfMix
    study's convolutions): ``MANIFOLD_MIXUP_THREADS=auto`` then leaves torch's threads as they are,
    so that a rerun gives the same numbers whatever the load (a number still sets them)."""
    check_executor(executor, address)
    _unique_keys(shards)
    from tqdm.auto import tqdm

    policy = _thread_policy() if executor == "local" else None
    if policy is not None and policy < 0 and not adapt_threads:
        policy = None
    bar = tqdm(total=len(shards), desc=desc, unit="shard", disable=not progress, smoothing=0.1)
    if policy is not None and policy < 0:
        import torch
    try:
        if executor == "local":
            for s in shards:
                if not store.done(s.key):
                    if policy is not None and policy < 0:
                        fit_threads_to_load(-policy)
                    store.save(s.key, worker(s.payload))
                bar.update(1)
        else:
            _run_ray(store, shards, worker, address, bar, gpus_per_task)
    finally:
        bar.close()
        if policy is not None and policy < 0:
            torch.set_num_threads(-policy)  # as it was: the next study starts from the same ceiling
    return store.rows(shards)


def run_study(out_dir: str | os.PathLike, study: str, settings: dict, shards: Sequence[Shard],
              worker: Callable[[dict], list[dict]], info: dict | None = None, **kwargs) -> list[dict]:
    """Open the study's :class:`ShardStore` (locking ``out_dir``), run its shards through
    :func:`run_shards` (``kwargs``: executor, address, progress, desc, gpus_per_task), release
    the lock and return all rows. The executor and address are checked before anything is written;
    ``info`` (what follows from the settings, e.g. a derived batch size) goes into the manifest."""
    check_executor(kwargs.get("executor", "local"), kwargs.get("address"))
    with ShardStore(out_dir, study, settings, info) as store:
        return run_shards(store, shards, worker, **kwargs)


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
            if store.done(s.key):
                bar.update(1)
            else:
                futures[remote.remote(worker, s.payload)] = s
        while futures:
            ready, _ = ray.wait(list(futures), num_returns=1)
            for ref in ready:
                s = futures.pop(ref)
                store.save(s.key, ray.get(ref))
                bar.update(1)
    finally:
        if started:
            ray.shutdown()
