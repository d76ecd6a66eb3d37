"""Fashion-MNIST read offline from its four official idx files (gzip or raw), checked strictly.

``apt-get install dataset-fashion-mnist`` (Debian) puts the files, gzip-compressed, in
:data:`DEFAULT_DIR`; a user may give any folder holding the same four files, gzip or raw.
Nothing is downloaded. Each file is parsed strictly (magic number, element type, number of
dimensions, 28x28 images, the exact size its header declares) and its decompressed content is
checked against the SHA-256 of the official file (gzip wrappers differ between sources, so the
compressed bytes are not compared). Any problem is one error line that names the file.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import zlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..checks import STUDY_SEED_MAX, check_real, check_seed

__all__ = ["DEFAULT_DIR", "FASHION_MNIST_SHA256", "FILES", "load_fashion_mnist", "read_fashion_mnist", "read_idx"]

#: Where the Debian package ``dataset-fashion-mnist`` installs the files.
DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"

#: The official files' names (without ``.gz``): (train images, train labels, test images, test labels).
FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

#: SHA-256 of each official file's decompressed content (DESIGN.md, "Data"); sizes in bytes:
#: 47,040,016, 60,008, 7,840,016 and 10,008.
FASHION_MNIST_SHA256: Mapping[str, str] = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}

_CLASSES = 10
_SIDE = 28
_UBYTE = 0x08  # the idx element type of every Fashion-MNIST file
_MAX_ITEMS = 60_000  # images (or labels) in the largest official file
_HOW_TO_GET = (f"install the Debian package (apt-get install dataset-fashion-mnist, which puts them in {DEFAULT_DIR}) "
               "or put the four official idx files (gzip or raw) in a folder and give it as data_dir (--data-dir)")


def _open(path: Path):
    """A binary reader of ``path``'s content: decompressed when the file starts with gzip's magic."""
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gz else open(path, "rb")


def read_idx(path: str | os.PathLike[str], ndim: int) -> tuple[np.ndarray, str]:
    """Read one idx file of unsigned bytes with ``ndim`` dimensions (3 for images, 1 for labels).

    The file may be gzip-compressed or raw. Its header is checked (two zero bytes, element type
    0x08 = unsigned byte, ``ndim`` dimensions, 28x28 images when ``ndim`` is 3, at most 60,000
    items), and the content must be exactly as long as the header declares: a truncated or
    oversized file is an error.

    Returns:
        (array uint8 of the declared shape, SHA-256 hex digest of the decompressed content).

    Raises:
        ValueError: one line naming ``path`` and what is wrong with it.
    """
    path = Path(path)
    digest = hashlib.sha256()
    try:
        with _open(path) as f:
            head = f.read(4)
            if len(head) < 4 or head[:2] != b"\x00\x00" or head[2] != _UBYTE or head[3] != ndim:
                raise ValueError(f"{path}: not an idx file of unsigned bytes with {ndim} dimension(s) (magic number "
                                 f"{head.hex() or 'missing'}, expected 0000080{ndim})")
            dims_raw = f.read(4 * ndim)
            if len(dims_raw) < 4 * ndim:
                raise ValueError(f"{path}: truncated in its header ({4 + len(dims_raw)} bytes)")
            dims = tuple(int(d) for d in np.frombuffer(dims_raw, dtype=">u4"))
            if dims[0] > _MAX_ITEMS:  # (a gzip bomb's header cannot make us read gigabytes)
                raise ValueError(f"{path}: its header declares {dims[0]} items; Fashion-MNIST's files hold at most "
                                 f"{_MAX_ITEMS}")
            if ndim == 3 and dims[1:] != (_SIDE, _SIDE):
                raise ValueError(f"{path}: images of {dims[1]}x{dims[2]} pixels; Fashion-MNIST's are {_SIDE}x{_SIDE}")
            size = int(np.prod(dims, dtype=np.int64))
            body = f.read(size + 1)  # one byte more than declared: an oversized file shows here
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"{path}: cannot be read as a (gzip-compressed) idx file ({type(e).__name__}: {e})") from None
    if len(body) < size:
        raise ValueError(f"{path}: truncated: {len(body)} bytes of data where its header declares {size} ({dims})")
    if len(body) > size:
        raise ValueError(f"{path}: oversized: more data than the {size} bytes its header declares ({dims})")
    digest.update(head + dims_raw)
    digest.update(body)
    return np.frombuffer(bytearray(body), dtype=np.uint8).reshape(dims), digest.hexdigest()  # writable


def _find(folder: Path, name: str) -> Path | None:
    for candidate in (folder / f"{name}.gz", folder / name):
        if candidate.is_file():
            return candidate
    return None


def read_fashion_mnist(
    data_dir: str | os.PathLike[str] | None = None, checksums: Mapping[str, str] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The four official files as arrays: x_train uint8 ``[n, 1, 28, 28]``, y_train int64 ``[n]``,
    x_test, y_test (60,000 and 10,000 images for the official files).

    Args:
        data_dir: folder holding ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
            ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, each raw or with ``.gz``
            (the compressed one is read when both exist); default :data:`DEFAULT_DIR`.
        checksums: file name (without ``.gz``) -> SHA-256 of its decompressed content; default
            :data:`FASHION_MNIST_SHA256`, the official files' (tests give their own).

    Raises:
        FileNotFoundError: a file is missing; the one line says which and how to get them.
        ValueError: a file that is malformed, truncated, oversized, holds labels outside
            [0, 10) or another count than its partner, or whose content is not the official one.
    """
    folder = Path(DEFAULT_DIR if data_dir is None else data_dir)
    table = FASHION_MNIST_SHA256 if checksums is None else checksums
    paths = {name: _find(folder, name) for name in FILES}
    missing = [name for name, p in paths.items() if p is None]
    if missing:
        where = "the folder does not exist" if not folder.is_dir() else f"missing {', '.join(missing)} (raw or .gz)"
        raise FileNotFoundError(f"Fashion-MNIST not found in {folder}: {where}; {_HOW_TO_GET}")
    arrays = {}
    for name, path in paths.items():
        arr, sha = read_idx(path, 3 if "images" in name else 1)
        if sha != table.get(name):
            raise ValueError(f"{path}: its content (SHA-256 {sha}) is not the official {name} (SHA-256 "
                             f"{table.get(name)}); the file is altered, corrupt or another data set; refusing it")
        arrays[name] = arr
    out = []
    for split, (images, labels) in (("train", FILES[:2]), ("test", FILES[2:])):
        x, y = arrays[images], arrays[labels].astype(np.int64)
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"{paths[images]} holds {x.shape[0]} images but {paths[labels]} holds {y.shape[0]} labels")
        if y.size and int(y.max()) >= _CLASSES:
            raise ValueError(f"{paths[labels]}: labels must lie in [0, {_CLASSES}); found {int(y.max())}")
        out += [x.reshape(-1, 1, _SIDE, _SIDE), y]
    return tuple(out)


def load_fashion_mnist(
    data_dir: str | os.PathLike[str] | None = None,
    train_fraction: float = 1.0,
    seed: int = 0,
    checksums: Mapping[str, str] | None = None,
):
    """Fashion-MNIST as an :class:`~manifold_mixup.paper.images.ImageDataset`: the official 60,000/10,000
    split, x float32 ``[n, 1, 28, 28]`` normalised with the mean and standard deviation of the
    training images used (pixels 0..255), y int64 in ``[0, 10)``, ``name="fashion-mnist"``.

    Args:
        data_dir: the folder of the four files (see :func:`read_fashion_mnist`); default
            :data:`DEFAULT_DIR`.
        train_fraction: share of the training images kept, in ``(0, 1]``: a stratified subset
            drawn from ``seed`` (the test set does not change).
        seed: seed of that subset (unused at 1.0).
        checksums: see :func:`read_fashion_mnist`.
    """
    from .images import make_dataset, train_subset

    train_fraction = check_real("train_fraction", train_fraction, 0, 1, low_open=True)
    seed = check_seed("seed", seed, STUDY_SEED_MAX)
    x_train, y_train, x_test, y_test = read_fashion_mnist(data_dir, checksums)
    keep = train_subset(y_train, train_fraction, seed, _CLASSES)
    if len(keep) < len(y_train):
        x_train, y_train = x_train[keep], y_train[keep]
    return make_dataset(x_train, y_train, x_test, y_test, num_classes=_CLASSES, name="fashion-mnist")
