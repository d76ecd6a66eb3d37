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
read, that holds another shard's key or another setting's fingerprint, whose content does not
match the SHA-256 digest recorded in it when it was written, or whose rows fail the study's own
check (types, finite values, ranges, exactly the expected problems, methods and epochs once each)
is recomputed with a warning naming it: nothing edited reaches a study's tables. Only regular files
are read as shards and manifests (a FIFO, a device or a symbolic link is refused by name without
being opened for reading), and no more than ``MAX_FILE_BYTES`` of one.

Executors: ``"local"`` runs shards one after another in this process; ``"ray"`` submits them as
Ray tasks (``pip install manifold-mixup[ray]``) to the cluster at ``address`` (None starts a
local Ray instance). Worker functions must be importable top-level functions.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import platform
import socket
import stat
import sys
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["Shard", "ShardList", "ShardStore", "StudyMismatchError", "StudyInUseError", "UnreadableFileError",
           "run_shards", "run_study", "ensure_dir", "check_executor", "write_atomic", "read_json", "fingerprint", "machine_info", "strict_json",
           "shard_digest", "check_rows", "remove_stale_temp", "COUNT_MAX", "LOCK_NAME", "integer", "real", "one_of", "thread_setting", "MAX_FILE_BYTES"]

LOCK_NAME = ".lock"
_TMP_SUFFIX = ".tmp"
#: the most bytes read from one shard or manifest (a file linked to /dev/zero is never read whole)
MAX_FILE_BYTES = 256 * 2**20
#: the largest count a setting may hold (larger ones are refused in one line, before any work)
COUNT_MAX = 2**31 - 1


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


def _temp_name(folder: Path, stem: str) -> Path:
    """A fresh temporary name in ``folder``, chosen before the file exists: an interrupt at any
    moment after the file is made can still remove it (``mkstemp`` returns the name only after)."""
    return folder / f".{stem}.{os.urandom(8).hex()}{_TMP_SUFFIX}"


def remove_stale_temp(path: str | os.PathLike) -> None:
    """Remove the temporary files that a killed write of ``path`` left beside it (a run killed by
    SIGKILL cannot clean up; the next write of the same file does)."""
    path = Path(path)
    prefix = f".{path.name}."
    try:
        entries = list(path.parent.iterdir()) if path.parent.is_dir() else []
    except OSError:
        return
    for p in entries:
        middle = p.name[len(prefix):-len(_TMP_SUFFIX)]
        if (p.name.startswith(prefix) and p.name.endswith(_TMP_SUFFIX) and len(middle) == 16
                and all(c in "0123456789abcdef" for c in middle) and p.is_file() and not p.is_symlink()):
            p.unlink(missing_ok=True)


def write_atomic(path: str | os.PathLike, data: str | bytes) -> None:
    """Write ``data`` (text or bytes) to ``path`` through a temporary file in the same directory,
    an fsync and a rename: readers see the old file or the whole new one, never a part.
    An OSError (disk full, read-only, permissions) names ``path``; neither an error nor an
    interrupt (Ctrl-C, SIGTERM) at any moment leaves the temporary file behind."""
    path = Path(path)
    if path.is_dir() or (path.exists() and not path.is_file()):  # never rename over a folder or a device
        raise OSError(errno.EISDIR if path.is_dir() else errno.EEXIST,
                      "exists and is not a regular file", str(path))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _os_error(e, path, "creating a file there") from None
    tmp = _temp_name(path.parent, path.name)
    doing = "creating a file there"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)  # umask applies
        doing = "writing it"
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise _os_error(e, path, doing) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
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
        probe = _temp_name(path, "probe")
        try:
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        finally:
            probe.unlink(missing_ok=True)  # a run holding the folder may have cleaned it up already
    except OSError as e:
        raise _os_error(e, path, "preparing the output folder") from None
    return path


_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder"), (stat.S_ISLNK, "a symbolic link"))


def _not_regular(mode: int) -> str | None:
    """What a non-regular file is (None for a regular file)."""
    return None if stat.S_ISREG(mode) else next((name for test, name in _KINDS if test(mode)), "not a regular file")


def read_bytes(path: str | os.PathLike, what: str, limit: int = MAX_FILE_BYTES) -> bytes:
    """The content of ``path`` when it is a regular file of at most ``limit`` bytes. A symbolic
    link, a FIFO, a device, a socket or a folder is refused by name, never opened for reading (a
    FIFO would block, a device would be read without end); errors are UnreadableFileErrors."""
    path = Path(path)
    try:
        kind = _not_regular(os.lstat(path).st_mode)
        if kind is None:  # O_NONBLOCK and O_NOFOLLOW: a file swapped for a FIFO or a link meanwhile cannot block us
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
            with os.fdopen(fd, "rb") as f:
                kind = _not_regular(os.fstat(fd).st_mode)
                data = b"" if kind else f.read(limit + 1)
    except OSError as e:
        raise UnreadableFileError(f"{what} {path} cannot be read ({type(e).__name__}: {e.strerror or e})") from None
    if kind is not None:
        raise UnreadableFileError(f"{what} {path} cannot be read (it is {kind}, not a regular file; refused)")
    if len(data) > limit:
        raise UnreadableFileError(f"{what} {path} cannot be read (it holds more than {limit} bytes, more than this "
                                  "package writes; refused)")
    return data


def read_json(path: Path, what: str) -> Any:
    """Parse a JSON file (a regular file of at most ``MAX_FILE_BYTES``); any failure is an
    UnreadableFileError that names the file, in one line of bounded length."""
    data = read_bytes(path, what)
    try:
        return json.loads(data.decode())
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise UnreadableFileError(f"{what} {path} cannot be read ({type(e).__name__}: {str(e)[:200]})") from None


def shard_digest(record: dict) -> str:
    """SHA-256 of a shard record (its key, fingerprint, threads and rows), as written in it."""
    body = {k: v for k, v in record.items() if k != "digest"}
    return "sha256:" + hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# -- the rows' schema: a study states each column's type and range, and which rows a shard holds --

def integer(low: int, high: int) -> Callable[[Any], bool]:
    """A column of integers in [low, high] (not bools)."""
    return lambda v: type(v) is int and low <= v <= high


def real(low: float = -math.inf, high: float = math.inf, *, nan: bool = False) -> Callable[[Any], bool]:
    """A column of numbers in [low, high] (ints allowed, not bools); NaN only with ``nan``."""
    def ok(v: Any) -> bool:
        if type(v) not in (int, float):
            return False
        if isinstance(v, float) and math.isnan(v):
            return nan
        try:
            return low <= v <= high
        except OverflowError:
            return False
    return ok


def one_of(values: Iterable) -> Callable[[Any], bool]:
    """A column whose values are among ``values`` (compared with their type: True is not 1)."""
    allowed = {(type(v), v) for v in values}
    return lambda v: (type(v), v) in allowed if isinstance(v, (str, int, float, bool, type(None))) else False


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def check_rows(rows: list, columns: dict[str, Callable[[Any], bool]], identity: Sequence[str],
               expected: Sequence[tuple]) -> str | None:
    """Why ``rows`` are not a shard's rows, or None: each row a dict with exactly ``columns``, each
    value accepted by its column's test, and the rows' ``identity`` columns equal to ``expected``
    in order (every expected row once: none missing, none repeated, none from another shard)."""
    names = sorted(columns)
    for i, r in enumerate(rows):
        if not isinstance(r, dict) or sorted(r) != names:
            got = sorted(r)[:20] if isinstance(r, dict) else type(r).__name__
            return f"row {i} has columns {_short(got)}, not {names}"
        for c, ok in columns.items():
            if not ok(r[c]):
                return f"row {i}: {c} = {_short(r[c])} is not a valid value"
    got = [tuple(r[c] for c in identity) for r in rows]
    if got != list(expected):
        seen: set = set()
        for g in got:
            if g in seen:
                return f"the row {dict(zip(identity, g))} appears more than once"
            seen.add(g)
        want = set(expected)
        extra = [g for g in got if g not in want]
        if extra:
            return f"the row {dict(zip(identity, extra[0]))} does not belong to this shard"
        missing = [e for e in expected if e not in seen]
        if missing:
            return f"{len(missing)} expected row(s) missing, e.g. {dict(zip(identity, missing[0]))}"
        return "its rows are not in the order they were written"
    return None


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
    settings (or files of no study: then nothing, not even the lock file, is made there),
    :class:`UnreadableFileError` naming an unreadable manifest, and OSError naming the path when
    the directory cannot be made or written.

    ``check(payload, rows) -> str | None``: the study's schema of a shard's rows (why they are not
    what its worker returns for ``payload``, or None); it is applied to every shard read and written.
    """

    def __init__(self, out_dir: str | os.PathLike, study: str, settings: dict, info: dict | None = None,
                 check: Callable[[dict, list], str | None] | None = None) -> None:
        from filelock import FileLock, Timeout

        self.dir = Path(out_dir)
        self.study = study
        self.settings = settings
        self.info = info or {}
        self.check = check
        self._machines: list[dict] = []
        self._columns: list[str] | None = None  # the rows' columns, from the first shard read or written
        self.fingerprint = fingerprint(settings)  # also refuses NaN / inf settings, before anything is written
        self._refuse_foreign_folder()
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

    def _refuse_foreign_folder(self) -> None:
        """A folder that holds files but no trace of a study (no lock, manifest or shards) is
        refused before anything, the lock file included, is made in it (``--out /``)."""
        if not self.dir.is_dir():
            return
        try:
            names = {p.name for p in self.dir.iterdir()}
        except OSError as e:
            raise _os_error(e, self.dir, "listing the output folder") from None
        if names and not names & {LOCK_NAME, "manifest.json", "shards"}:
            raise StudyMismatchError(f"{self.dir} is not empty and holds no study manifest: choose another --out")

    def _open(self) -> None:
        self._remove_temp_files()
        manifest = self.dir / "manifest.json"
        machine = machine_info()
        shards_dir = self.dir / "shards"
        if shards_dir.is_symlink() or (shards_dir.exists() and not shards_dir.is_dir()):
            raise StudyMismatchError(f"{shards_dir} is not a folder this package made (a link or a file): "
                                     "choose another --out")
        if os.path.lexists(manifest):
            try:
                old = read_json(manifest, "the study manifest")
                if not isinstance(old, dict):
                    raise UnreadableFileError(f"the study manifest {manifest} is not a manifest this package wrote")
                if isinstance(old.get("study"), str) and old["study"] != self.study and not self._only_a_manifest():
                    raise StudyMismatchError(f"{self.dir} holds results of the study {old['study'][:60]!r}, not "
                                             f"{self.study!r}: choose another --out")
                if "fingerprint" not in old:
                    raise UnreadableFileError(f"the study manifest {manifest} is not a manifest this package wrote")
            except UnreadableFileError as e:
                if not self._only_a_manifest():
                    raise UnreadableFileError(f"{e}; delete it and rerun the same command (finished shards written "
                                              "under the same settings are kept)") from None
                old = {}  # nothing else in the folder: taken over below
                if not manifest.is_file() or manifest.is_symlink():
                    manifest.unlink()  # a FIFO, a device node or a link where the manifest goes: replaced
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
                    f"{self.dir} holds {self.study!r} results under other settings (differing: {_short(diff)}); "
                    "rerun with the same settings to resume, or choose another --out"
                )
            machines = old.get("machines") if isinstance(old.get("machines"), list) else []
            self._machines = machines
            if machine not in machines:  # resumed on another machine (or with other threads): say so
                self._machines = machines + [machine]
                self._write_manifest()
        else:
            adopted = self._adoptable_shards()
            if adopted is None:
                raise StudyMismatchError(f"{self.dir} is not empty and holds no study manifest: choose another --out")
            if adopted:
                warnings.warn(f"{manifest} was missing; {adopted} finished shard(s) written under the same settings "
                              "are kept and the manifest is written again", stacklevel=3)
            self._machines = [machine]
            self._write_manifest()
        try:
            shards_dir.mkdir(exist_ok=True)
        except OSError as e:
            raise _os_error(e, shards_dir, "creating the shards folder") from None

    def _write_manifest(self) -> None:
        text = strict_json({"study": self.study, "fingerprint": self.fingerprint, "settings": self.settings,
                            "derived": self.info, "versions": _versions(), "machines": self._machines},
                           "the study manifest", indent=2, sort_keys=True)
        write_atomic(self.dir / "manifest.json", text + "\n")

    def record(self, info: dict) -> None:
        """Add ``info`` (results that follow from the run, e.g. a figure's accuracies) to the
        manifest's ``derived`` entry and write it again."""
        self.info = {**self.info, **info}
        self._write_manifest()

    def _remove_temp_files(self) -> None:
        """Temporary files of an interrupted write (we hold the lock: nobody else is writing)."""
        for folder in (self.dir, self.dir / "shards"):
            if folder.is_dir() and not folder.is_symlink():
                for p in folder.iterdir():
                    if _is_temp(p) and p.is_file() and not p.is_symlink():
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

    def _problem(self, key: str, data: Any, payload: dict | None) -> str | None:
        """Why ``data`` (a parsed shard file) is not shard ``key`` of these settings, or None."""
        if not isinstance(data, dict) or not isinstance(data.get("rows"), list) or not all(
                isinstance(r, dict) for r in data["rows"]):
            return "it is not a shard file (no list of rows)"
        if data.get("key") != key:
            return f"it holds shard {_short(data.get('key'))}, not {key!r} (a copied or renamed file?)"
        if data.get("fingerprint") != self.fingerprint:
            return (f"it was written under other settings (fingerprint {_short(data.get('fingerprint'))}, "
                    f"this study {self.fingerprint!r})")
        if "digest" not in data:
            return "it carries no content digest (written by an older version, or edited)"
        try:
            same = data["digest"] == shard_digest(data)
        except (TypeError, ValueError, RecursionError):
            same = False
        if not same:
            return "its content does not match the SHA-256 digest recorded when it was written (an edited file?)"
        if self.check is not None and payload is not None:
            why = self.check(payload, data["rows"])
            return None if why is None else f"its rows fail the study's check ({why})"
        columns = [sorted(r) for r in data["rows"]]
        if columns and (any(c != columns[0] for c in columns) or (self._columns is not None and columns[0] != self._columns)):
            return "its rows do not have the columns of the other shards (an edited file?)"
        if columns and self._columns is None:
            self._columns = columns[0]
        return None

    def _verdict(self, key: str, payload: dict | None) -> tuple[str | None, Any]:
        """(why shard ``key``'s file is not a finished shard, or None; its parsed content)."""
        p = self.path(key)
        if not os.path.lexists(p):
            return "missing", None
        try:
            data = read_json(p, "shard")
        except UnreadableFileError as e:
            return "it cannot be read " + str(e).split(" cannot be read ", 1)[-1], None
        return self._problem(key, data, payload), data

    def done(self, key: str, payload: dict | None = None) -> bool:
        """Whether shard ``key`` is finished: its file exists and holds this shard under these
        settings, with its digest, and rows that pass the study's check for ``payload``. A file
        that does not is reported by a warning naming it and counts as not done (it is recomputed
        and replaced)."""
        why, _ = self._verdict(key, payload)
        if why is None:
            return True
        if why != "missing":
            warnings.warn(f"shard {self.path(key)}: {why}; recomputing it", stacklevel=2)
        return False

    def threads_of(self, key: str, payload: dict | None = None) -> int | None:
        """The torch threads recorded with finished shard ``key`` (None if not finished or not recorded)."""
        why, data = self._verdict(key, payload)
        return data.get("threads") if why is None else None

    def save(self, key: str, rows: list[dict], payload: dict | None = None, threads: int | None = None) -> None:
        """Write shard ``key`` with its digest (and the torch threads it was computed with). Rows
        that fail the study's check are not written: a RuntimeError names the shard."""
        if self.check is not None and payload is not None:
            why = self.check(payload, rows)
            if why is not None:
                raise RuntimeError(f"shard {key}: the worker's rows fail the study's check ({why}); nothing was written")
        if rows and self._columns is None:
            self._columns = sorted(rows[0])
        p = self.path(key)
        if os.path.lexists(p) and (p.is_symlink() or not p.is_file()):
            p.unlink()  # a link, FIFO or device node where a shard goes (refused when read): replaced
        record = {"key": key, "fingerprint": self.fingerprint, "threads": threads, "rows": rows}
        record["digest"] = shard_digest(record)
        # rows may hold NaN (a relative risk over a zero Bayes risk): written as Python's json does
        write_atomic(p, json.dumps(record))

    def load(self, key: str, payload: dict | None = None) -> list[dict]:
        why, data = self._verdict(key, payload)
        if why is not None:
            raise UnreadableFileError(f"shard {self.path(key)}: {why}; delete it and rerun the same command to "
                                      "recompute it")
        return data["rows"]

    def rows(self, shards: Iterable[Shard]) -> list[dict]:
        """All rows, in shard order (every shard must be finished)."""
        return [row for s in shards for row in self.load(s.key, s.payload)]


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
                         f"process may use); got {_short(raw)}")
    return int(value)


def _thread_policy() -> int | None:
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


def _torch_threads() -> int | None:
    """torch's intra-op threads now (None when torch was never imported: a worker without torch)."""
    torch = sys.modules.get("torch")
    return torch.get_num_threads() if torch is not None else None


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

    policy = _thread_policy() if executor == "local" else None
    if policy is not None and policy < 0 and not adapt_threads:
        policy = None
    if not adapt_threads:
        if executor == "local":
            import torch  # the study's numbers depend on torch's threads: they are recorded and compared

        _refuse_other_threads(store, shards, (shard_threads or _torch_threads()) if executor == "local" else 1)
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
                    store.save(s.key, rows, s.payload, threads=shard_threads or _torch_threads())
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
              finish: Callable[[list[dict]], Any] | None = None, **kwargs) -> Any:
    """Open the study's :class:`ShardStore` (locking ``out_dir``), run its shards through
    :func:`run_shards` (``kwargs``: executor, address, progress, desc, gpus_per_task, adapt_threads, shard_threads)
    and return all rows, or ``finish(rows)`` when given: it writes the study's outputs while the
    lock is still held, so that no second run can start before the last output is written.
    The executor, the address and ``MANIFOLD_MIXUP_THREADS`` are checked before anything is
    written; ``info`` (what follows from the settings, e.g. a derived batch size) goes into the
    manifest; ``check`` is the study's schema of a shard's rows (see :class:`ShardStore`)."""
    check_executor(kwargs.get("executor", "local"), kwargs.get("address"))
    thread_setting()
    with ShardStore(out_dir, study, settings, info, check=check) as store:
        rows = run_shards(store, shards, worker, **kwargs)
        return rows if finish is None else finish(rows)


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
