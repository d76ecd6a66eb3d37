"""The shard store: a study's output folder, its lock, its manifest and its finished shards.

A study's output directory holds ``manifest.json`` (the study's name, exact settings, versions
and the machines it ran on) and ``shards/<key>.json`` (one file per finished shard: its key,
the settings' fingerprint, its rows and their SHA-256 digest). Running the same study again skips
finished shards; a directory holding another study, or the same study under other settings, is
refused rather than mixed in. One study per directory at a time: a :class:`ShardStore` holds an
OS-level lock on ``<out>/.lock`` while it is open. A shard file that cannot be read, that holds
another shard's key or another setting's fingerprint, whose content does not match its digest, or
whose rows fail the study's own check (``check_rows``) is recomputed with a warning naming it:
nothing edited reaches a study's tables.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .files import LOCK_NAME, StudyInUseError, StudyMismatchError, TMP_SUFFIX, UnreadableFileError, clipped, ensure_dir, fingerprint, machine_info, os_error, read_json, strict_json, versions, write_atomic

__all__ = ["Shard", "ShardList", "shard_digest", "integer", "real", "one_of", "check_rows", "ShardStore"]


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


def shard_digest(record: dict) -> str:
    """SHA-256 of a shard record (its key, fingerprint, threads and rows), as written in it."""
    body = {k: v for k, v in record.items() if k != "digest"}
    return "sha256:" + hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


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


def check_rows(rows: list, columns: dict[str, Callable[[Any], bool]], identity: Sequence[str],
               expected: Sequence[tuple]) -> str | None:
    """Why ``rows`` are not a shard's rows, or None: each row a dict with exactly ``columns``, each
    value accepted by its column's test, and the rows' ``identity`` columns equal to ``expected``
    in order (every expected row once: none missing, none repeated, none from another shard)."""
    names = sorted(columns)
    for i, r in enumerate(rows):
        if not isinstance(r, dict) or sorted(r) != names:
            got = sorted(r)[:20] if isinstance(r, dict) else type(r).__name__
            return f"row {i} has columns {clipped(got)}, not {names}"
        for c, ok in columns.items():
            if not ok(r[c]):
                return f"row {i}: {c} = {clipped(r[c])} is not a valid value"
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


def _is_temp(p: Path) -> bool:
    return p.name.startswith(".") and p.name.endswith(TMP_SUFFIX)


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
            raise os_error(e, self.dir / LOCK_NAME, "locking the output folder") from None
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
            raise os_error(e, self.dir, "listing the output folder") from None
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
                now = json.loads(json.dumps(self.settings))  # as the manifest holds them (tuples are lists)
                diff = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
                raise StudyMismatchError(
                    f"{self.dir} holds {self.study!r} results under other settings (differing: {clipped(diff)}); "
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
            raise os_error(e, shards_dir, "creating the shards folder") from None

    def _write_manifest(self) -> None:
        text = strict_json({"study": self.study, "fingerprint": self.fingerprint, "settings": self.settings,
                            "derived": self.info, "versions": versions(), "machines": self._machines},
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
            return f"it holds shard {clipped(data.get('key'))}, not {key!r} (a copied or renamed file?)"
        if data.get("fingerprint") != self.fingerprint:
            return (f"it was written under other settings (fingerprint {clipped(data.get('fingerprint'))}, "
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
