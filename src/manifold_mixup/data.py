"""Image data sets, read offline: scikit-learn's bundled 8x8 digits and CIFAR-10.

Nothing here downloads anything. CIFAR-10 is read from a local directory in its official
binary format (``cifar-10-batches-bin``, plain bytes, no pickle) or its python format
(``cifar-10-batches-py``) through a restricted unpickler that admits only the numpy globals
needed to rebuild the arrays. The official ``.tar.gz`` archives are accepted too: their MD5
is checked against the published checksum before anything is extracted.

Every loader returns an :class:`ImageDataset` whose images are float32 ``[n, C, H, W]``,
normalised per channel with the mean and standard deviation of the *training* split.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import tarfile
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "CIFAR10_MD5",
    "DATASETS",
    "ImageDataset",
    "load_cifar10",
    "load_dataset",
    "load_digits",
]

#: Names accepted by :func:`load_dataset`.
DATASETS: tuple[str, ...] = ("digits", "cifar10")

#: Published MD5 digests of the official CIFAR-10 archives, keyed by archive file name.
CIFAR10_MD5: Mapping[str, str] = {
    "cifar-10-binary.tar.gz": "c32a1d4ab5d03f1284b67883e8d87530",
    "cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a",
}

_BIN_FOLDER = "cifar-10-batches-bin"
_PY_FOLDER = "cifar-10-batches-py"
# Archive name -> the folder it unpacks to.
_ARCHIVE_FOLDER = {
    "cifar-10-binary.tar.gz": _BIN_FOLDER,
    "cifar-10-python.tar.gz": _PY_FOLDER,
}
_FORMAT_FILES = {
    _BIN_FOLDER: (
        [f"data_batch_{i}.bin" for i in range(1, 6)],
        ["test_batch.bin"],
    ),
    _PY_FOLDER: (
        [f"data_batch_{i}" for i in range(1, 6)],
        ["test_batch"],
    ),
}
_CIFAR_CLASSES = 10
_CIFAR_PIXELS = 3 * 32 * 32  # 3072 bytes: 1024 red, then 1024 green, then 1024 blue
_CIFAR_RECORD = 1 + _CIFAR_PIXELS  # binary record: 1 label byte + pixels


@dataclass(frozen=True, eq=False)
class ImageDataset:
    """A train/test pair of image tensors.

    Attributes:
        x_train: float32 ``[n_train, C, H, W]``, normalised per channel.
        y_train: int64 ``[n_train]``, class indices in ``[0, num_classes)``.
        x_test: float32 ``[n_test, C, H, W]``, normalised with the training statistics.
        y_test: int64 ``[n_test]``.
        num_classes: number of classes.
        name: data set name (``"digits"``, ``"cifar10"``).
        channel_mean: per-channel mean ``(C,)`` of the raw training pixels (raw units:
            0..16 for digits, 0..255 for CIFAR-10); ``raw = x * channel_std + channel_mean``.
        channel_std: per-channel standard deviation ``(C,)`` of the raw training pixels.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    name: str
    channel_mean: tuple[float, ...] = ()
    channel_std: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            x = getattr(self, f"x_{split}")
            y = getattr(self, f"y_{split}")
            if not isinstance(x, torch.Tensor) or x.dtype != torch.float32 or x.dim() != 4:
                raise ValueError(
                    f"x_{split} must be a float32 torch.Tensor [n, C, H, W]; got "
                    f"{type(x).__name__} {getattr(x, 'dtype', None)} "
                    f"shape {tuple(getattr(x, 'shape', ()))}"
                )
            if not isinstance(y, torch.Tensor) or y.dtype != torch.int64 or y.dim() != 1:
                raise ValueError(
                    f"y_{split} must be an int64 torch.Tensor [n]; got {type(y).__name__} "
                    f"{getattr(y, 'dtype', None)} shape {tuple(getattr(y, 'shape', ()))}"
                )
            if x.shape[0] != y.shape[0]:
                raise ValueError(
                    f"x_{split} has {x.shape[0]} rows but y_{split} has {y.shape[0]}"
                )
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise ValueError(
                f"x_train images {tuple(self.x_train.shape[1:])} and x_test images "
                f"{tuple(self.x_test.shape[1:])} must have the same [C, H, W]"
            )
        if not isinstance(self.num_classes, int) or self.num_classes < 1:
            raise ValueError(f"num_classes must be a positive int; got {self.num_classes!r}")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        c, h, w = self.x_train.shape[1:]
        return (int(c), int(h), int(w))


# ---------------------------------------------------------------------------- helpers


def _channel_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std (population) of ``x`` ``[n, C, H, W]``, float64 ``(C,)``.

    uint8 input is summarised exactly and cheaply through a 256-bin histogram per channel.
    A channel with zero spread gets std 1 so that normalising never divides by zero.
    """
    c = x.shape[1]
    mean = np.empty(c, dtype=np.float64)
    std = np.empty(c, dtype=np.float64)
    values = np.arange(256, dtype=np.float64)
    for k in range(c):
        channel = x[:, k]
        if x.dtype == np.uint8:
            # torch.bincount reads uint8 directly (np.bincount widens to intp first).
            flat = torch.from_numpy(np.ascontiguousarray(channel)).reshape(-1)
            counts = torch.bincount(flat, minlength=256).numpy().astype(np.float64)
            total = counts.sum()
            m = float((counts * values).sum() / total)
            var = float((counts * (values - m) ** 2).sum() / total)
        else:
            channel = channel.astype(np.float64)
            m = float(channel.mean())
            var = float(channel.var())
        mean[k] = m
        std[k] = np.sqrt(var) if var > 0 else 1.0
    return mean, std


def _normalise(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
    """``(x - mean) / std`` per channel as a float32 tensor ``[n, C, H, W]``."""
    out = torch.from_numpy(np.ascontiguousarray(x)).to(torch.float32)
    out -= torch.from_numpy(mean.astype(np.float32))[None, :, None, None]
    out /= torch.from_numpy(std.astype(np.float32))[None, :, None, None]
    return out


def _make_dataset(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    num_classes: int,
    name: str,
) -> ImageDataset:
    """Normalise raw ``[n, C, H, W]`` arrays with training statistics and wrap them."""
    mean, std = _channel_stats(x_train)
    return ImageDataset(
        x_train=_normalise(x_train, mean, std),
        y_train=torch.from_numpy(np.ascontiguousarray(y_train, dtype=np.int64)),
        x_test=_normalise(x_test, mean, std),
        y_test=torch.from_numpy(np.ascontiguousarray(y_test, dtype=np.int64)),
        num_classes=num_classes,
        name=name,
        channel_mean=tuple(float(v) for v in mean),
        channel_std=tuple(float(v) for v in std),
    )


def _check_fraction(train_fraction: object) -> float:
    if isinstance(train_fraction, bool) or not isinstance(train_fraction, (int, float, np.floating)) or not (
        0.0 < float(train_fraction) <= 1.0
    ):
        raise ValueError(f"train_fraction must be a number in (0, 1]; got {train_fraction!r}")
    return float(train_fraction)


def _train_subset(y: np.ndarray, train_fraction: float, seed: int, num_classes: int) -> np.ndarray:
    """Indices of a stratified subset of ``train_fraction`` of the training rows (all, in order,
    at 1.0): each class keeps its share, up to one row; drawn from ``seed``."""
    if train_fraction >= 1.0:
        return np.arange(len(y))
    from sklearn.model_selection import train_test_split

    keep = int(round(train_fraction * len(y)))
    if keep < num_classes:
        raise ValueError(
            f"train_fraction {train_fraction} keeps {keep} of {len(y)} training images, fewer than the "
            f"{num_classes} classes; use a larger fraction"
        )
    idx, _ = train_test_split(np.arange(len(y)), train_size=keep, random_state=seed, shuffle=True, stratify=y)
    return np.sort(idx)


def _check_seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not (
        0 <= int(seed) < 2**32
    ):
        raise ValueError(f"seed must be an int in [0, 2**32); got {seed!r}")
    return int(seed)


# ---------------------------------------------------------------------------- digits


def load_digits(seed: int = 0, test_fraction: float = 0.25, train_fraction: float = 1.0) -> ImageDataset:
    """scikit-learn's bundled 8x8 digits (1797 images, 10 classes), split stratified.

    Args:
        seed: seed of the stratified train/test split (same seed, same split) and of the
            training subset.
        test_fraction: share of the images in the test split, in ``(0, 1)``.
        train_fraction: share of the training split kept, in ``(0, 1]``: a stratified subset
            (the test split does not change); normalised with the subset's own statistics.

    Returns:
        ImageDataset with x ``[n, 1, 8, 8]`` float32 (normalised with the training
        split's mean/std) and y int64; ``name="digits"``, ``num_classes=10``.
    """
    from sklearn.datasets import load_digits as _sk_load_digits
    from sklearn.model_selection import train_test_split

    seed = _check_seed(seed)
    if isinstance(test_fraction, bool) or not isinstance(
        test_fraction, (int, float, np.floating)
    ) or not (0.0 < float(test_fraction) < 1.0):
        raise ValueError(
            f"test_fraction must be a float strictly between 0 and 1; got {test_fraction!r}"
        )
    train_fraction = _check_fraction(train_fraction)
    bunch = _sk_load_digits()
    x = np.asarray(bunch.data, dtype=np.float64).reshape(-1, 1, 8, 8)
    y = np.asarray(bunch.target, dtype=np.int64)
    idx_train, idx_test = train_test_split(
        np.arange(len(y)),
        test_size=float(test_fraction),
        random_state=seed,
        shuffle=True,
        stratify=y,
    )
    idx_train = idx_train[_train_subset(y[idx_train], train_fraction, seed, 10)]
    return _make_dataset(
        x[idx_train], y[idx_train], x[idx_test], y[idx_test], num_classes=10, name="digits"
    )


# ---------------------------------------------------------------------------- CIFAR-10


def _latin1_bytes(text: str, encoding: str) -> bytes:
    """``_codecs.encode`` as protocol 2 uses it for bytes written by Python 3: latin-1 only."""
    if encoding != "latin1" or not isinstance(text, str):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}: only 'latin1' rebuilds bytes")
    return text.encode("latin1")


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals a numpy array needs under protocols 2 to 5.

    Each allowed global, and why:

    * ``numpy.core.multiarray._reconstruct`` (``numpy._core`` since numpy 2): protocols 2-4
      rebuild an ndarray through it (with ``ndarray.__setstate__``);
    * ``numpy.ndarray`` and ``numpy.dtype``: the array's class and its element type;
    * ``numpy.core.numeric._frombuffer`` (``numpy._core`` since numpy 2): protocol 5 rebuilds an
      array from its raw buffer;
    * ``_codecs.encode``, restricted to latin-1 text: protocol 2 written by Python 3 rebuilds
      ``bytes`` (the raw pixels and the dict keys) through it.

    Everything else (``os.system``, ``builtins.eval``, any class) is refused with
    :class:`pickle.UnpicklingError` naming the global, so a malicious file cannot run code.
    """

    @staticmethod
    def _allowed() -> dict[tuple[str, str], object]:
        core = getattr(np, "_core", None)
        if core is None:  # pragma: no cover - numpy < 2
            core = np.core
        reconstruct = core.multiarray._reconstruct
        frombuffer = core.numeric._frombuffer
        return {
            ("numpy.core.multiarray", "_reconstruct"): reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): reconstruct,
            ("numpy.core.numeric", "_frombuffer"): frombuffer,
            ("numpy._core.numeric", "_frombuffer"): frombuffer,
            ("numpy", "ndarray"): np.ndarray,
            ("numpy", "dtype"): np.dtype,
            ("_codecs", "encode"): _latin1_bytes,
        }

    def find_class(self, module: str, name: str) -> object:
        allowed = self._allowed()
        try:
            return allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name!s}: a CIFAR-10 python batch may "
                f"only reference {', '.join(f'{m}.{n}' for m, n in allowed)}"
            ) from None

    def persistent_load(self, pid: object) -> object:
        raise pickle.UnpicklingError(f"refusing persistent id {pid!r} in a CIFAR-10 batch")


def _read_python_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one python-format batch: uint8 ``[n, 3, 32, 32]`` and int64 ``[n]``."""
    try:
        with open(path, "rb") as f:
            obj = _RestrictedUnpickler(f, encoding="bytes").load()
    except pickle.UnpicklingError as e:
        raise ValueError(f"{path}: not a safe CIFAR-10 python batch: {e}") from e
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as e:
        raise ValueError(
            f"{path}: not a readable CIFAR-10 python batch ({type(e).__name__}: {e})"
        ) from e
    if not isinstance(obj, dict) or b"data" not in obj or b"labels" not in obj:
        keys = sorted(map(repr, obj)) if isinstance(obj, dict) else None
        raise ValueError(
            f"{path}: expected a dict with keys b'data' and b'labels'; got "
            f"{type(obj).__name__}" + (f" with keys {keys}" if keys is not None else "")
        )
    data = obj[b"data"]
    if (
        type(data) is not np.ndarray
        or data.dtype != np.uint8
        or data.ndim != 2
        or data.shape[1] != _CIFAR_PIXELS
        or data.shape[0] == 0
    ):
        raise ValueError(
            f"{path}: b'data' must be a uint8 numpy array [n, {_CIFAR_PIXELS}] with n > 0; "
            f"got {type(data).__name__} {getattr(data, 'dtype', None)} "
            f"shape {getattr(data, 'shape', None)}"
        )
    raw_labels = obj[b"labels"]
    if isinstance(raw_labels, np.ndarray):
        ok = raw_labels.ndim == 1 and np.issubdtype(raw_labels.dtype, np.integer)
    else:
        ok = isinstance(raw_labels, list) and all(
            isinstance(v, int) and not isinstance(v, bool) for v in raw_labels
        )
    if not ok:
        raise ValueError(f"{path}: b'labels' must be a list of ints or a 1-D integer array")
    labels = np.asarray(raw_labels, dtype=np.int64)
    if labels.shape != (data.shape[0],):
        raise ValueError(
            f"{path}: {data.shape[0]} images but {labels.shape[0]} labels; they must match"
        )
    _check_labels(path, labels)
    return data.reshape(-1, 3, 32, 32), labels


def _read_binary_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one binary-format batch: uint8 ``[n, 3, 32, 32]`` and int64 ``[n]``."""
    raw = np.fromfile(path, dtype=np.uint8)
    records = raw.reshape(-1, _CIFAR_RECORD)
    labels = records[:, 0].astype(np.int64)
    _check_labels(path, labels)
    return records[:, 1:].reshape(-1, 3, 32, 32), labels


def _check_labels(path: Path, labels: np.ndarray) -> None:
    bad = (labels < 0) | (labels >= _CIFAR_CLASSES)
    if bad.any():
        raise ValueError(
            f"{path}: labels must lie in [0, {_CIFAR_CLASSES}); found "
            f"{sorted(set(labels[bad].tolist()))[:5]}"
        )


def _kind(path: Path) -> str:
    """What a path that is neither a regular file nor a folder is, in words."""
    import stat

    mode = path.stat().st_mode
    for test, name in ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def _refuse_non_regular(path: Path) -> None:
    """A path that exists (through links) but is no regular file or folder is refused by name."""
    if path.exists() and not path.is_file() and not path.is_dir():
        raise ValueError(f"{path} is {_kind(path)}, not a regular file or folder; give the CIFAR-10 files themselves")


def _check_files(folder: Path, fmt: str) -> list[Path]:
    """Check that ``folder`` holds every batch file of format ``fmt`` with a sane size."""
    train, test = _FORMAT_FILES[fmt]
    names = train + test
    for n in names:
        _refuse_non_regular(folder / n)
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise FileNotFoundError(
            f"CIFAR-10 folder {folder} ({fmt} format) is incomplete: missing "
            f"{', '.join(missing)}; expected all of {', '.join(names)}"
        )
    paths = [folder / n for n in names]
    for p in paths:
        size = p.stat().st_size
        if size == 0:
            raise ValueError(f"{p}: file is empty")
        if fmt == _BIN_FOLDER and size % _CIFAR_RECORD != 0:
            raise ValueError(
                f"{p}: size {size} bytes is not a multiple of the {_CIFAR_RECORD}-byte "
                f"record (1 label byte + {_CIFAR_PIXELS} pixel bytes); the official batches "
                f"are {10000 * _CIFAR_RECORD} bytes"
            )
    return paths


def _md5(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _verify_archive(path: Path, checksums: Mapping[str, str]) -> str:
    """Check ``path``'s MD5 against ``checksums``; return the folder it unpacks to."""
    expected = checksums.get(path.name)
    if expected is None:
        raise ValueError(
            f"unknown CIFAR-10 archive name {path.name!r} ({path}); expected one of "
            f"{sorted(checksums)} (the official file names)"
        )
    actual = _md5(path)
    if actual.lower() != expected.lower():
        raise ValueError(
            f"checksum mismatch for {path}: expected MD5 {expected}, got {actual}; the file "
            f"is corrupt, incomplete or not the official archive; refusing to extract it"
        )
    return _ARCHIVE_FOLDER[path.name]


def _safe_members(tar: tarfile.TarFile, archive: Path) -> list[tarfile.TarInfo]:
    """Regular files and folders of ``tar`` with relative paths; refuse anything else."""
    members = tar.getmembers()
    for m in members:
        parts = Path(m.name).parts
        if m.name.startswith(("/", "\\")) or Path(m.name).is_absolute() or ".." in parts:
            raise ValueError(f"{archive}: refusing unsafe member path {m.name!r}")
        if not (m.isfile() or m.isdir()):
            raise ValueError(
                f"{archive}: refusing member {m.name!r}: only regular files and folders are "
                f"allowed, not links or devices"
            )
    return members


def _extract(archive: Path, folder: str, cache_dir: Path) -> Path:
    """Extract ``archive`` (already verified) so that ``cache_dir/folder`` appears atomically."""
    target = cache_dir / folder
    if target.is_dir():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=cache_dir))
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = _safe_members(tar, archive)
            if hasattr(tarfile, "data_filter"):
                tar.extractall(tmp, members=members, filter="data")
            else:  # pragma: no cover - Python without extraction filters
                tar.extractall(tmp, members=members)
        if not (tmp / folder).is_dir():
            raise ValueError(f"{archive}: archive does not contain the folder {folder!r}")
        try:
            os.replace(tmp / folder, target)
        except OSError:
            if not target.is_dir():  # a concurrent extraction may have won the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _locate_cifar10(
    data_dir: Path, cache_dir: Path | None, checksums: Mapping[str, str]
) -> tuple[Path, str]:
    """Find the folder holding the CIFAR-10 batches and its format (folder name)."""
    _refuse_non_regular(data_dir)
    if data_dir.is_file():
        cache = cache_dir if cache_dir is not None else data_dir.parent / "extracted"
        fmt = _verify_archive(data_dir, checksums)
        return _extract(data_dir, fmt, cache), fmt
    if not data_dir.is_dir():
        raise FileNotFoundError(
            f"data_dir {str(data_dir)!r} does not exist; pass a folder holding "
            f"{_BIN_FOLDER}/, {_PY_FOLDER}/ or one of {sorted(checksums)}, or the archive"
        )
    cache = cache_dir if cache_dir is not None else data_dir / "extracted"
    looked: list[str] = []
    # 1. The batches themselves, directly in data_dir or in the official folder.
    for fmt in (_BIN_FOLDER, _PY_FOLDER):
        train, test = _FORMAT_FILES[fmt]
        if any((data_dir / n).exists() for n in train + test):
            return data_dir, fmt
        looked.append(f"{data_dir}/{{{','.join(train + test)}}}")
    for fmt in (_BIN_FOLDER, _PY_FOLDER):
        if (data_dir / fmt).is_dir():
            return data_dir / fmt, fmt
        looked.append(str(data_dir / fmt))
    # 2. An official archive: verify, then extract into the cache.
    for name, fmt in _ARCHIVE_FOLDER.items():
        archive = data_dir / name
        if archive.is_file():
            return _extract(archive, _verify_archive(archive, checksums), cache), fmt
        looked.append(str(archive))
    # 3. A previous extraction.
    for fmt in (_BIN_FOLDER, _PY_FOLDER):
        if (cache / fmt).is_dir():
            return cache / fmt, fmt
        looked.append(str(cache / fmt))
    raise FileNotFoundError(
        "no CIFAR-10 data found; looked for: " + "; ".join(looked)
    )


def load_cifar10(
    data_dir: str | os.PathLike[str],
    cache_dir: str | os.PathLike[str] | None = None,
    checksums: Mapping[str, str] | None = None,
    train_fraction: float = 1.0,
    seed: int = 0,
) -> ImageDataset:
    """CIFAR-10 read from local files (never downloaded); official 50k/10k split.

    ``data_dir`` may be any of:

    * a folder holding ``cifar-10-batches-bin/`` (``data_batch_1.bin`` .. ``data_batch_5.bin``,
      ``test_batch.bin``; records of 1 label byte + 3072 pixel bytes) or
      ``cifar-10-batches-py/`` (``data_batch_1`` .. ``data_batch_5``, ``test_batch``), or
      holding those batch files directly;
    * a folder holding ``cifar-10-binary.tar.gz`` or ``cifar-10-python.tar.gz``;
    * such an archive file itself.

    Archives are checked against ``checksums`` (MD5) *before* extraction and unpacked
    safely (regular files only, no absolute or ``..`` paths) into ``cache_dir``. Binary
    batches are preferred over python ones; python batches go through a restricted
    unpickler that admits only numpy array reconstruction.

    Args:
        data_dir: folder or archive, as above.
        cache_dir: where archives are extracted; default ``<data_dir>/extracted``, or
            ``extracted/`` next to the archive when ``data_dir`` is the archive.
        checksums: archive file name -> expected MD5 hex digest; default
            :data:`CIFAR10_MD5`, the published digests (tests may inject their own).
        train_fraction: share of the 50,000 training images kept, in ``(0, 1]``: a stratified
            subset drawn from ``seed`` (the test set does not change).
        seed: seed of that subset (unused at 1.0).

    Returns:
        ImageDataset with x ``[n, 3, 32, 32]`` float32 normalised with the training split's
        per-channel statistics, y int64 in ``[0, 10)``, ``name="cifar10"``.

    Raises:
        FileNotFoundError: nothing usable found, or a batch file missing (lists them).
        ValueError: checksum mismatch, unsafe archive, bad file size or structure,
            refused pickle global.
    """
    if data_dir is None:
        raise ValueError("data_dir is required for CIFAR-10: a folder or archive path")
    train_fraction = _check_fraction(train_fraction)
    seed = _check_seed(seed)
    table = CIFAR10_MD5 if checksums is None else checksums
    folder, fmt = _locate_cifar10(
        Path(data_dir), None if cache_dir is None else Path(cache_dir), table
    )
    paths = _check_files(folder, fmt)
    read = _read_binary_batch if fmt == _BIN_FOLDER else _read_python_batch
    n_train = len(_FORMAT_FILES[fmt][0])
    batches = [read(p) for p in paths]
    x_train = np.concatenate([b[0] for b in batches[:n_train]])
    y_train = np.concatenate([b[1] for b in batches[:n_train]])
    x_test = np.concatenate([b[0] for b in batches[n_train:]])
    y_test = np.concatenate([b[1] for b in batches[n_train:]])
    keep = _train_subset(y_train, train_fraction, seed, _CIFAR_CLASSES)
    if len(keep) < len(y_train):
        x_train, y_train = x_train[keep], y_train[keep]
    return _make_dataset(x_train, y_train, x_test, y_test, num_classes=10, name="cifar10")


# ---------------------------------------------------------------------------- dispatch


def load_dataset(
    name: str, data_dir: str | os.PathLike[str] | None = None, seed: int = 0, train_fraction: float = 1.0
) -> ImageDataset:
    """Load a data set by name.

    Args:
        name: one of :data:`DATASETS` (``"digits"``, ``"cifar10"``), case-insensitive.
        data_dir: required for ``"cifar10"`` (see :func:`load_cifar10`); refused for ``"digits"``
            (scikit-learn bundles it: a folder given there would be silently ignored).
        seed: split seed for ``"digits"`` (CIFAR-10 uses its fixed official split) and the seed
            of the training subset.
        train_fraction: share of the training images kept, in ``(0, 1]``, stratified by class;
            the test set does not change.

    Returns:
        ImageDataset, x float32 ``[n, C, H, W]``, y int64 ``[n]``.
    """
    key = name.strip().lower() if isinstance(name, str) else name
    if key == "digits":
        if data_dir is not None:
            raise ValueError(f"data_dir {str(data_dir)!r} is only used with dataset 'cifar10'; digits are bundled "
                             "with scikit-learn (leave it out)")
        return load_digits(seed=seed, train_fraction=train_fraction)
    if key == "cifar10":
        if data_dir is None:
            raise ValueError(
                "dataset 'cifar10' needs data_dir: a local folder holding "
                f"{_BIN_FOLDER}/ or {_PY_FOLDER}/ or an official archive (nothing is "
                "downloaded)"
            )
        return load_cifar10(data_dir, train_fraction=train_fraction, seed=seed)
    raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
