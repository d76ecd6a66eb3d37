"""Atomic files and manifests: writing a file so that no reader ever sees half of it, reading only
regular files of bounded size, the errors a study's folder can raise, settings' fingerprints and
the record of the machine a study ran on.

Every file is written to a temporary name and renamed, so an interrupted run never leaves a
half-written result; temporary files left by a killed run are removed on the next. Only regular
files are read (a FIFO, a device or a symbolic link is refused by name without being opened for
reading), and no more than ``MAX_FILE_BYTES`` of one.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import platform
import stat
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["LOCK_NAME", "TMP_SUFFIX", "MAX_FILE_BYTES", "StudyMismatchError", "StudyInUseError", "UnreadableFileError", "strict_json", "fingerprint", "os_error", "remove_stale_temp", "write_atomic", "ensure_dir", "read_bytes", "read_json", "versions", "machine_info", "clipped", "torch_threads"]


LOCK_NAME = ".lock"


TMP_SUFFIX = ".tmp"


#: the most bytes read from one shard or manifest (a file linked to /dev/zero is never read whole)
MAX_FILE_BYTES = 256 * 2**20


class StudyMismatchError(RuntimeError):
    """The output directory holds results of another study or of other settings."""


class StudyInUseError(StudyMismatchError):
    """Another run holds the output directory's lock."""


class UnreadableFileError(StudyMismatchError):
    """A manifest or shard file that is not what this package wrote (truncated, edited, junk)."""


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


def os_error(e: OSError, path: Path, doing: str) -> OSError:
    """The same error, naming ``path`` and what was being done (for a one-line message)."""
    out = OSError(e.errno, f"{e.strerror or e} ({doing})", str(path))
    return out


def _temp_name(folder: Path, stem: str) -> Path:
    """A fresh temporary name in ``folder``, chosen before the file exists: an interrupt at any
    moment after the file is made can still remove it (``mkstemp`` returns the name only after)."""
    return folder / f".{stem}.{os.urandom(8).hex()}{TMP_SUFFIX}"


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
        middle = p.name[len(prefix):-len(TMP_SUFFIX)]
        if (p.name.startswith(prefix) and p.name.endswith(TMP_SUFFIX) and len(middle) == 16
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
        raise os_error(e, path, "creating a file there") from None
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
        raise os_error(e, path, doing) from None
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
        raise os_error(e, path, "preparing the output folder") from None
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


def clipped(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def versions() -> dict:
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


def torch_threads() -> int | None:
    """torch's intra-op threads now (None when torch was never imported: a worker without torch)."""
    torch = sys.modules.get("torch")
    return torch.get_num_threads() if torch is not None else None
