"""Tests of the offline data loaders: digits split, CIFAR-10 in both official formats written
here in miniature, restricted unpickling, archive checksums and safe extraction."""

from __future__ import annotations

import gzip
import hashlib
import io
import multiprocessing
import os
import pickle
import re
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from manifold_mixup.paper.cifar10 import CIFAR10_MD5, load_cifar10
from manifold_mixup.paper.data import DATASETS, load_dataset
from manifold_mixup.paper.digits import load_digits
from manifold_mixup.paper.images import ImageDataset

TRAIN_SIZES = (3, 2, 4, 1, 3)  # records per training batch (any count is allowed)
TEST_SIZE = 5


# ---------------------------------------------------------------------------- digits


def test_digits_shapes_and_normalisation():
    ds = load_digits(seed=0, test_fraction=0.25)
    assert isinstance(ds, ImageDataset)
    assert ds.name == "digits" and ds.num_classes == 10
    assert ds.x_train.shape == (1347, 1, 8, 8) and ds.x_test.shape == (450, 1, 8, 8)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert ds.y_test.shape == (450,) and ds.image_shape == (1, 8, 8)
    assert abs(ds.x_train.mean().item()) < 1e-4
    assert abs(ds.x_train.std(unbiased=False).item() - 1.0) < 1e-4
    assert set(ds.y_train.tolist()) == set(range(10))


def test_digits_split_is_stratified():
    frac = 0.25
    ds = load_digits(seed=3, test_fraction=frac)
    n_tr = torch.bincount(ds.y_train, minlength=10).numpy()
    n_te = torch.bincount(ds.y_test, minlength=10).numpy()
    total = n_tr + n_te
    assert np.all(np.abs(n_te - frac * total) <= 1)
    # Proportions agree between splits within one sample per class.
    assert np.all(np.abs(n_tr / n_tr.sum() * n_te.sum() - n_te) <= 1)


def test_digits_seed_controls_split():
    a, b, c = load_digits(seed=1), load_digits(seed=1), load_digits(seed=2)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.x_test, c.x_test)


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, "0.2"])
def test_digits_bad_test_fraction(bad):
    with pytest.raises(ValueError, match="test_fraction"):
        load_digits(test_fraction=bad)


def test_digits_bad_seed():
    with pytest.raises(ValueError, match="seed"):
        load_digits(seed=-1)


# ---------------------------------------------------------------------------- writers


def _random_batches(seed: int = 0):
    rng = np.random.default_rng(seed)
    sizes = list(TRAIN_SIZES) + [TEST_SIZE]
    return [
        (rng.integers(0, 256, (n, 3072), dtype=np.uint8), rng.integers(0, 10, n))
        for n in sizes
    ]


def _write_binary(folder: Path, batches) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    for name, (pixels, labels) in zip(names, batches):
        records = np.concatenate([labels.astype(np.uint8)[:, None], pixels], axis=1)
        (folder / name).write_bytes(records.tobytes())


class _Py2Pickler(pickle._Pickler):
    """Writes str/bytes as Python 2 strings, like the official (Python 2) CIFAR files."""

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2_str(self, obj):
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str
    dispatch[str] = _save_py2_str


def _py2_pickle(obj) -> bytes:
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    # numpy < 1.25 (and the official files) name the old module path.
    return buf.getvalue().replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")


def _write_python(folder: Path, batches, py2: bool = True) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for k, (name, (pixels, labels)) in enumerate(zip(names, batches)):
        obj = {
            b"batch_label": f"batch {k}".encode(),
            b"labels": [int(v) for v in labels],
            b"data": pixels,
            b"filenames": [f"img_{k}_{i}.png".encode() for i in range(len(labels))],
        }
        blob = _py2_pickle(obj) if py2 else pickle.dumps(obj, protocol=4)
        (folder / name).write_bytes(blob)


def _raw(ds: ImageDataset, split: str) -> np.ndarray:
    """Undo the normalisation: raw uint8 pixels [n, 3, 32, 32]."""
    x = getattr(ds, f"x_{split}").double().numpy()
    mean = np.asarray(ds.channel_mean)[None, :, None, None]
    std = np.asarray(ds.channel_std)[None, :, None, None]
    raw = x * std + mean
    assert np.abs(raw - np.round(raw)).max() < 1e-3
    return np.round(raw).astype(np.uint8)


def _check_round_trip(ds: ImageDataset, batches) -> None:
    train_px = np.concatenate([b[0] for b in batches[:5]])
    train_y = np.concatenate([b[1] for b in batches[:5]])
    test_px, test_y = batches[5]
    assert ds.name == "cifar10" and ds.num_classes == 10
    assert ds.x_train.shape == (sum(TRAIN_SIZES), 3, 32, 32)
    assert ds.x_test.shape == (TEST_SIZE, 3, 32, 32)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert ds.y_train.tolist() == train_y.tolist() and ds.y_test.tolist() == test_y.tolist()
    raw_train, raw_test = _raw(ds, "train"), _raw(ds, "test")
    # Layout [C, H, W]: byte c*1024 + h*32 + w of the 3072 is channel c, row h, column w.
    for c, h, w in [(0, 0, 0), (0, 0, 1), (0, 1, 0), (1, 0, 0), (2, 31, 31), (1, 17, 5)]:
        assert np.array_equal(raw_test[:, c, h, w], test_px[:, c * 1024 + h * 32 + w])
    assert np.array_equal(raw_train.reshape(-1, 3072), train_px)
    assert np.array_equal(raw_test.reshape(-1, 3072), test_px)
    # Normalised with the training split's per-channel statistics.
    ref = train_px.reshape(-1, 3, 1024).astype(np.float64)
    assert np.allclose(ds.channel_mean, ref.mean(axis=(0, 2)))
    assert np.allclose(ds.channel_std, ref.std(axis=(0, 2)))
    per_channel = ds.x_train.double().transpose(0, 1).reshape(3, -1)
    assert torch.allclose(per_channel.mean(1), torch.zeros(3, dtype=torch.float64), atol=1e-5)


# ---------------------------------------------------------------------------- CIFAR-10


def test_cifar_binary_round_trip(tmp_path):
    batches = _random_batches(0)
    _write_binary(tmp_path / "cifar-10-batches-bin", batches)
    _check_round_trip(load_cifar10(tmp_path), batches)
    # The batch folder itself is accepted too, and load_dataset dispatches.
    _check_round_trip(load_cifar10(tmp_path / "cifar-10-batches-bin"), batches)
    _check_round_trip(load_dataset("cifar10", data_dir=tmp_path), batches)


@pytest.mark.parametrize("py2", [True, False], ids=["python2-pickle", "protocol4"])
def test_cifar_python_round_trip(tmp_path, py2):
    batches = _random_batches(1)
    _write_python(tmp_path / "cifar-10-batches-py", batches, py2=py2)
    _check_round_trip(load_cifar10(tmp_path), batches)


class _Evil:
    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return (self.func, (self.arg,))


@pytest.mark.parametrize("protocol", [2, 4])
@pytest.mark.parametrize("kind", ["os.system", "builtins.eval"])
def test_cifar_malicious_pickle_refused(tmp_path, kind, protocol):
    batches = _random_batches(2)
    folder = tmp_path / "cifar-10-batches-py"
    _write_python(folder, batches)
    marker = tmp_path / "pwned"
    shell = f"echo pwned > {marker}"
    if kind == "os.system":
        payload = _Evil(os.system, shell)
        global_name = rf"{os.name}\.system"
    else:
        payload = _Evil(eval, f"__import__('os').system({shell!r})")
        global_name = r"(__builtin__|builtins)\.eval"  # protocol 2 writes __builtin__
    obj = {b"data": payload, b"labels": [0]}
    blob = _py2_pickle(obj) if protocol == 2 else pickle.dumps(obj, protocol=protocol)
    (folder / "data_batch_3").write_bytes(blob)
    with pytest.raises(ValueError, match=f"data_batch_3.*refusing to load global {global_name}"):
        load_cifar10(tmp_path)
    assert not marker.exists()
    # Control: the payload is real, a plain unpickler would have run it.
    pickle.loads(blob)
    assert marker.exists()


@pytest.mark.parametrize(
    "obj",
    [
        [1, 2, 3],
        {b"data": np.zeros((2, 3072), np.uint8)},
        {"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1]},
        {b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]},
        {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]},
        {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]},
        {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]},
        {b"data": np.zeros((2, 3072), np.uint8), b"labels": ["a", "b"]},
    ],
    ids=["list", "no-labels", "str-keys", "float", "width", "count", "range", "label-type"],
)
def test_cifar_unexpected_pickle_structure_refused(tmp_path, obj):
    folder = tmp_path / "cifar-10-batches-py"
    _write_python(folder, _random_batches(3))
    (folder / "test_batch").write_bytes(pickle.dumps(obj, protocol=3))
    with pytest.raises(ValueError, match="test_batch"):
        load_cifar10(tmp_path)


def test_cifar_truncated_pickle_refused(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    _write_python(folder, _random_batches(3))
    blob = (folder / "data_batch_1").read_bytes()
    (folder / "data_batch_1").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match="data_batch_1"):
        load_cifar10(tmp_path)


def test_cifar_missing_file_lists_expected(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    _write_binary(folder, _random_batches(4))
    (folder / "data_batch_4.bin").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_4.bin") as err:
        load_cifar10(tmp_path)
    assert "test_batch.bin" in str(err.value) and "data_batch_1.bin" in str(err.value)


def test_cifar_empty_dir_lists_what_was_looked_for(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_cifar10(tmp_path)
    msg = str(err.value)
    for expected in ("cifar-10-batches-bin", "cifar-10-batches-py", "cifar-10-binary.tar.gz"):
        assert expected in msg
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_cifar10(tmp_path / "nope")


def test_cifar_binary_bad_size_and_label(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    batches = _random_batches(5)
    _write_binary(folder, batches)
    with open(folder / "data_batch_2.bin", "ab") as f:
        f.write(b"\x00")
    with pytest.raises(ValueError, match="multiple of the 3073-byte"):
        load_cifar10(tmp_path)
    _write_binary(folder, batches)
    blob = bytearray((folder / "test_batch.bin").read_bytes())
    blob[0] = 11
    (folder / "test_batch.bin").write_bytes(bytes(blob))
    with pytest.raises(ValueError, match="labels must lie in"):
        load_cifar10(tmp_path)


def _make_archive(src_root: Path, folder: str, archive: Path) -> str:
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src_root / folder, arcname=folder)
    return hashlib.md5(archive.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    "archive_name, folder, writer",
    [
        ("cifar-10-binary.tar.gz", "cifar-10-batches-bin", _write_binary),
        ("cifar-10-python.tar.gz", "cifar-10-batches-py", _write_python),
    ],
)
def test_cifar_archive_checksum(tmp_path, archive_name, folder, writer):
    batches = _random_batches(6)
    writer(tmp_path / "src" / folder, batches)
    dl = tmp_path / "dl"
    archive = dl / archive_name
    digest = _make_archive(tmp_path / "src", folder, archive)

    # Published checksum: our tiny archive does not match and is never extracted.
    with pytest.raises(ValueError, match="checksum mismatch") as err:
        load_cifar10(dl)
    msg = str(err.value)
    assert CIFAR10_MD5[archive_name] in msg and digest in msg and archive_name in msg
    assert not (dl / "extracted" / folder).exists()
    with pytest.raises(ValueError, match="checksum mismatch"):
        load_cifar10(archive)
    with pytest.raises(ValueError, match="checksum mismatch"):
        load_cifar10(dl, checksums={archive_name: "0" * 32})

    # Injected correct checksum: extracted into the cache and read back exactly.
    table = {archive_name: digest}
    _check_round_trip(load_cifar10(dl, checksums=table), batches)
    assert (dl / "extracted" / folder).is_dir()
    _check_round_trip(load_cifar10(dl, checksums=table), batches)  # reuses the cache
    cache = tmp_path / "cache"
    _check_round_trip(load_cifar10(archive, cache_dir=cache, checksums=table), batches)
    assert (cache / folder).is_dir()


def test_cifar_archive_with_unsafe_member_refused(tmp_path):
    dl = tmp_path / "dl"
    dl.mkdir()
    archive = dl / "cifar-10-binary.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        data = b"escaped"
        info = tarfile.TarInfo("../escaped.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    digest = hashlib.md5(archive.read_bytes()).hexdigest()
    with pytest.raises(ValueError, match="unsafe member"):
        load_cifar10(archive, checksums={archive.name: digest})
    assert not (tmp_path / "escaped.txt").exists()
    assert not (dl / "escaped.txt").exists()


def test_cifar_unknown_archive_name(tmp_path):
    archive = tmp_path / "other.tar.gz"
    archive.write_bytes(b"not really")
    with pytest.raises(ValueError, match="unknown CIFAR-10 archive name"):
        load_cifar10(archive)


# ---------------------------------------------------------------------------- dispatch


def test_load_dataset_dispatch_and_errors():
    assert {"digits", "cifar10"} <= set(DATASETS)  # other sets have their own test files
    ds = load_dataset("digits", seed=4)
    assert torch.equal(ds.y_test, load_digits(seed=4).y_test)
    with pytest.raises(ValueError, match=r"dataset must be one of \['digits', 'cifar10', 'fashion-mnist'\]; got 'mnist'"):
        load_dataset("mnist")
    with pytest.raises(ValueError, match="needs data_dir"):
        load_dataset("cifar10")


def test_image_dataset_validates():
    x = torch.zeros(2, 1, 4, 4)
    y = torch.zeros(2, dtype=torch.int64)
    with pytest.raises(ValueError, match="y_train"):
        ImageDataset(x, y.float(), x, y, 2, "t")
    with pytest.raises(ValueError, match="x_test has 2 rows"):
        ImageDataset(x, y, x, y[:1], 2, "t")
    with pytest.raises(ValueError, match="same"):
        ImageDataset(x, y, torch.zeros(2, 3, 4, 4), y, 2, "t")


# ---------------------------------------------------------------------------- faults and subsets


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_cifar_python_batches_repickled_by_python3_are_accepted(tmp_path, protocol):
    batches = _random_batches(5)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name, (pixels, labels) in zip(names, batches):
        obj = {b"batch_label": b"x", b"labels": np.asarray(labels, dtype=np.int64), b"data": pixels}
        (folder / name).write_bytes(pickle.dumps(obj, protocol=protocol))
    _check_round_trip(load_cifar10(tmp_path), batches)


def test_cifar_codecs_encode_only_rebuilds_latin1_bytes(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    _write_python(folder, _random_batches(6))
    # protocol 2 calling _codecs.encode with a codec other than latin-1: {b'data': encode('abc', 'rot13')}
    blob = b"\x80\x02}U\x04datac_codecs\nencode\nX\x03\x00\x00\x00abcX\x05\x00\x00\x00rot13\x86Rs."
    (folder / "data_batch_2").write_bytes(blob)
    with pytest.raises(ValueError, match="data_batch_2.*only 'latin1'"):
        load_cifar10(tmp_path)


def test_non_regular_files_are_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match="/dev/zero is a character device"):
        load_cifar10("/dev/zero")
    folder = tmp_path / "cifar-10-batches-bin"
    _write_binary(folder, _random_batches(7))
    (folder / "data_batch_2.bin").unlink()
    os.mkfifo(folder / "data_batch_2.bin")
    with pytest.raises(ValueError, match="data_batch_2.bin is a named pipe"):
        load_cifar10(tmp_path)


def test_data_dir_is_refused_for_digits():
    with pytest.raises(ValueError, match="data_dir '/nonexistent' is only used with datasets 'cifar10' and 'fashion-mnist'"):
        load_dataset("digits", data_dir="/nonexistent")


def test_train_fraction_is_a_stratified_subset_with_the_same_test_images():
    full, part = load_digits(seed=4), load_digits(seed=4, train_fraction=0.2)
    assert part.x_train.shape[0] == round(0.2 * full.x_train.shape[0])
    assert torch.equal(full.y_test, part.y_test)
    raw = lambda ds, x: x.double() * torch.tensor(ds.channel_std).double() + torch.tensor(ds.channel_mean).double()
    assert torch.allclose(raw(full, full.x_test), raw(part, part.x_test), atol=1e-4)  # same images
    n_full = torch.bincount(full.y_train, minlength=10).double()
    n_part = torch.bincount(part.y_train, minlength=10).double()
    assert torch.all((n_part - 0.2 * n_full).abs() <= 1)  # each class keeps its share
    # every kept image is one of the full training split's images
    full_set = {tuple(v) for v in raw(full, full.x_train).round().reshape(len(full.y_train), -1).tolist()}
    assert all(tuple(v) in full_set for v in raw(part, part.x_train).round().reshape(len(part.y_train), -1).tolist())
    assert torch.equal(load_digits(seed=4, train_fraction=0.2).x_train, part.x_train)  # seeded
    for bad in (0.0, 1.5, float("nan"), "0.5"):
        with pytest.raises(ValueError, match="train_fraction"):
            load_digits(train_fraction=bad)
    with pytest.raises(ValueError, match="fewer than the 10 classes"):
        load_digits(train_fraction=0.005)


# ---------------------------------------------------------------------------- crafted python batches
# Each blob is a batch an attacker (or a broken tool) could write. All are refused with one short
# line naming the file; the nested, huge and bare-shape ones by the opcode scan before unpickling.

_RECONSTRUCT = b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
_DTYPE_STATE = b"(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00t"


def _py2_array(shape: bytes, data: bytes, dtype: bytes = b"cnumpy\ndtype\nU\x02u1K\x00K\x01\x87R" + _DTYPE_STATE + b"b") -> bytes:
    """An array as the official (Python 2, numpy 1) batches write it: _reconstruct(ndarray, (0,), 'b'),
    then the state (1, shape, dtype('u1', 0, 1), False, data); ``shape`` is the opcodes of a tuple."""
    size = b"U" + bytes([len(data)]) if len(data) < 256 else b"T" + struct.pack("<i", len(data))
    return _RECONSTRUCT + b"K\x00\x85U\x01b\x87R(K\x01" + shape + dtype + b"\x89" + size + data + b"tb"


def _dict_blob(*pairs: bytes) -> bytes:
    """A protocol-2 dict of the given key/value opcodes."""
    return b"\x80\x02}(" + b"".join(pairs) + b"u."


def _labels_blob(n: int) -> bytes:
    return b"U\x06labels](" + b"K\x00" * n + b"e"


def _batch(n: int = 1, **changes) -> dict:
    obj = {b"batch_label": b"crafted", b"labels": [0] * n, b"data": np.zeros((n, 3072), np.uint8),
           b"filenames": [b"a.png"] * n}
    obj.update({k.encode(): v for k, v in changes.items()})
    return obj


def _nested_key(depth: int) -> bytes:
    """{((...(0,)...),): 0}: a dict key of ``depth`` nested tuples (2 + depth bytes)."""
    return b"\x80\x02}K\x00" + b"\x85" * depth + b"K\x00s."


def _recursive_list() -> list:
    items: list = []
    items.append(items)
    return items


_SHARED = [0]
CRAFTED = [  # (id, blob maker, the reason the one-line refusal gives)
    ("nested-key-5000", lambda: _nested_key(5_000), "nested deeper than 6 levels"),
    ("nested-key-50000", lambda: _nested_key(50_000), "nested deeper than 6 levels"),
    ("nested-lists-10000", lambda: b"\x80\x02}U\x04data" + b"]" * 10_000 + b"a" * 9_999 + b"s.", "nested deeper"),
    ("open-marks-100000", lambda: b"\x80\x02" + b"(" * 100_000 + b".", "nested deeper"),
    ("label-2**70", lambda: pickle.dumps(_batch(labels=[2**70]), protocol=2), "integer wider than 64 bits"),
    ("label-2**40", lambda: pickle.dumps(_batch(labels=[2**40]), protocol=2), r"labels must lie in \[0, 10\)"),
    ("label-bool", lambda: pickle.dumps(_batch(labels=[True]), protocol=2), "b'labels' must be a list of ints"),
    ("label-uint64-max", lambda: pickle.dumps(_batch(labels=np.array([2**64 - 1], np.uint64)), protocol=4),
     r"labels must lie in \[0, 10\)"),
    ("key-50MB", lambda: pickle.dumps({b"x" * 50_000_000: 0}, protocol=3), "dict key that is a long text"),
    ("key-tuple", lambda: pickle.dumps({(b"data",): 0}, protocol=3), "dict key that is a tuple"),
    ("key-unknown", lambda: pickle.dumps(_batch(extra=1), protocol=3), "unexpected key b'extra'"),
    ("global-name-1MB", lambda: b"\x80\x02c" + b"m" * 1_000_000 + b"\nx\n.", "refusing to load global m{80}\\.\\.\\."),
    ("ndarray-bare-shape-2KB", lambda: _dict_blob(
        b"U\x04datacnumpy\nndarray\n(M\xe8\x03M\x00\x0c\x86U\x02u1tR", _labels_blob(1000)),
     "a call of numpy.ndarray .*uninitialised memory"),
    ("reconstruct-with-shape", lambda: _dict_blob(
        b"U\x04data" + _RECONSTRUCT + b"M\xe8\x03M\x00\x0c\x86U\x01B\x87R", _labels_blob(1000)),
     r"refusing _reconstruct of shape \(1000, 3072\)"),
    ("array-without-data", lambda: _dict_blob(
        b"U\x04data" + _RECONSTRUCT + b"K\x00\x85U\x01b\x87R", _labels_blob(1)), "an array without its data bytes"),
    ("array-short-data", lambda: _dict_blob(
        b"U\x04data" + _py2_array(b"M\xe8\x03M\x00\x0c\x86", b"0123456789"), _labels_blob(1000)),
     r"needs 3072000 data bytes; got 10 bytes"),
    ("dtype-object", lambda: pickle.dumps(_batch(data=np.full((1, 3072), None, object)), protocol=2),
     "refusing dtype 'O8'"),
    ("dtype-subarray-state", lambda: _dict_blob(b"U\x04data" + _py2_array(
        b"K\x01M\x00\x0c\x86", b"\x00" * 3072,
        b"cnumpy\ndtype\nU\x02u1K\x00K\x01\x87R(K\x03U\x01|U\x02u1K\x02\x85\x86NNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"),
        _labels_blob(1)), "refusing the state of dtype"),
    ("list-shared", lambda: pickle.dumps(_batch(labels=_SHARED, filenames=_SHARED), protocol=3), "list used twice"),
    ("list-recursive", lambda: pickle.dumps(_batch(labels=_recursive_list()), protocol=3), "list used twice"),
    ("float-label", lambda: pickle.dumps(_batch(labels=[0.0]), protocol=3), "opcode BINFLOAT at byte"),
    ("trailing-bytes", lambda: pickle.dumps(_batch(), protocol=3) + b"junk", "4 bytes follow the end"),
    ("not-a-dict-at-the-end", lambda: pickle.dumps([_batch()], protocol=3), "does not end with one dict"),
    ("300000-opcodes", lambda: pickle.dumps(_batch(300_000, data=np.zeros((1, 3072), np.uint8)), protocol=2),
     "more than 250000 pickle opcodes"),
    ("filenames-count", lambda: pickle.dumps(_batch(2, filenames=[b"a"]), protocol=3), "b'filenames' must be a list of 2"),
    ("batch-label-long", lambda: pickle.dumps(_batch(batch_label=b"x" * 300), protocol=3), "b'batch_label' must be text"),
    # The unpickler would size its memo for index 2**32 - 1: 2**33 pointers (64 GiB).
    ("memo-index-2**32-1", lambda: b"\x80\x02}r\xff\xff\xff\xff.", "memo index 4294967295 at byte 3"),
    ("frame-2**63", lambda: b"\x80\x04\x95" + struct.pack("<Q", 2**63) + b"}.", "a frame of 9223372036854775808 bytes"),
    ("codecs-not-latin1", lambda: _dict_blob(b"U\x04datac_codecs\nencode\nX\x02\x00\x00\x00\xdc\xa5X\x06\x00\x00\x00latin1\x86R"),
     "encode of text that is not latin-1"),
]


def _refusal(tmp_path: Path, blob: bytes, name: str = "test_batch") -> str:
    """Write ``blob`` as one batch of an otherwise good python folder; return the one-line refusal."""
    folder = tmp_path / "cifar-10-batches-py"
    _write_python(folder, _random_batches(3))
    (folder / name).write_bytes(blob)
    with pytest.raises(ValueError) as err:
        load_cifar10(tmp_path)
    msg = str(err.value)
    assert "\n" not in msg and len(msg) < 300 + len(str(folder)), msg[:1000]
    return msg


@pytest.mark.parametrize("make, reason", [c[1:] for c in CRAFTED], ids=[c[0] for c in CRAFTED])
def test_cifar_crafted_python_batch_is_refused_in_one_line(tmp_path, make, reason):
    msg = _refusal(tmp_path, make())
    assert re.search(f"cifar-10-batches-py/test_batch: .*{reason}", msg), msg


def _load_in_child(data_dir: Path, conn) -> None:
    try:
        load_cifar10(data_dir)
        conn.send("accepted")
    except BaseException as e:  # noqa: BLE001 - reported to the parent as it is
        conn.send(f"{type(e).__name__}: {e}")


def test_cifar_200000_nested_tuples_are_refused_without_a_crash(tmp_path):
    # A 200 KB key of 200,000 nested tuples crashed the interpreter (segfault); read in a forked child
    # so that a crash fails this test instead of killing pytest.
    folder = tmp_path / "cifar-10-batches-py"
    _write_python(folder, _random_batches(3))
    (folder / "test_batch").write_bytes(_nested_key(200_000))
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_load_in_child, args=(tmp_path, child))
    proc.start()
    proc.join(60)  # the answer is a short line: it waits in the pipe
    if proc.is_alive():
        proc.kill()
        proc.join()
    got = parent.recv() if parent.poll(0) else "no answer"
    assert proc.exitcode == 0, (proc.exitcode, got)
    assert re.fullmatch(r"ValueError: \S+test_batch: not a CIFAR-10 python batch: values nested deeper than 6 levels "
                        r"at byte \d+", got), got


def test_cifar_official_byte_layout_is_read(tmp_path):
    # The official batches (Python 2 cPickle, numpy 1) write dtype('u1', 0, 1) with ints, not bools.
    batches = _random_batches(8)
    folder = tmp_path / "cifar-10-batches-py"
    _write_python(folder, batches)
    for path in folder.iterdir():
        blob, count = re.subn(rb"(U\x02u1q.)\x89\x88\x87", lambda m: m[1] + b"K\x00K\x01\x87", path.read_bytes(), flags=re.S)
        assert count == 1
        path.write_bytes(blob)
    _check_round_trip(load_cifar10(tmp_path), batches)
    # _py2_array writes that layout by hand: one image, read back byte for byte.
    pixels = bytes(range(256)) * 12
    blob = _dict_blob(b"U\x04data" + _py2_array(b"K\x01M\x00\x0c\x86", pixels), b"U\x06labels]K\x07a")
    (folder / "test_batch").write_bytes(blob)
    ds = load_cifar10(tmp_path)
    assert ds.y_test.tolist() == [7]
    assert np.array_equal(_raw(ds, "test").reshape(-1), np.frombuffer(pixels, np.uint8))


# ---------------------------------------------------------------------------- binary batches and archives


def _sparse(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        f.truncate(size)


@pytest.mark.parametrize(
    "folder, name, damage, reason",
    [
        ("cifar-10-batches-bin", "data_batch_3.bin", lambda p: p.write_bytes(p.read_bytes()[:-100]),
         "is not a multiple of the 3073-byte record"),
        ("cifar-10-batches-bin", "data_batch_3.bin", lambda p: _sparse(p, 10_001 * 3073),
         "10001 records, more than the 10000 of an official batch"),
        ("cifar-10-batches-bin", "test_batch.bin", lambda p: p.write_bytes(b""), "file is empty"),
        ("cifar-10-batches-py", "data_batch_5", lambda p: _sparse(p, (64 << 20) + 1),
         "67108865 bytes, more than the 67108864 a python batch may have"),
        ("cifar-10-batches-py", "data_batch_5", lambda p: p.write_bytes(p.read_bytes()[:-1]),
         r"not a complete pickle \(pickle exhausted before seeing STOP\)"),
    ],
    ids=["bin-truncated", "bin-oversized", "bin-empty", "py-oversized", "py-truncated"],
)
def test_cifar_damaged_batch_file_is_refused_by_name(tmp_path, folder, name, damage, reason):
    writer = _write_binary if folder.endswith("bin") else _write_python
    writer(tmp_path / folder, _random_batches(9))
    damage(tmp_path / folder / name)
    with pytest.raises(ValueError) as err:
        load_cifar10(tmp_path)
    msg = str(err.value)
    assert re.search(f"{folder}/{name}: .*{reason}", msg) and "\n" not in msg, msg


def _member_too_large() -> bytes:
    info = tarfile.TarInfo("cifar-10-batches-bin/data_batch_1.bin")
    info.size = (64 << 20) + 1  # a header only: the member is refused before its data is read
    return gzip.compress(info.tobuf() + b"\0" * 1024)


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda good: good[: len(good) // 2], r"not a readable \.tar\.gz archive \((ReadError|EOFError)"),
        (lambda good: b"not gzip at all", r"not a readable \.tar\.gz archive \(ReadError"),
        (lambda good: _member_too_large(), "member 'cifar-10-batches-bin/data_batch_1.bin' has 67108865 bytes"),
    ],
    ids=["truncated", "not-gzip", "member-too-large"],
)
def test_cifar_damaged_archive_is_refused_by_name(tmp_path, make, reason):
    _write_binary(tmp_path / "src" / "cifar-10-batches-bin", _random_batches(10))
    archive = tmp_path / "dl" / "cifar-10-binary.tar.gz"
    _make_archive(tmp_path / "src", "cifar-10-batches-bin", archive)
    archive.write_bytes(make(archive.read_bytes()))
    # The injected checksum matches the damaged file: the reader itself must refuse it.
    with pytest.raises(ValueError) as err:
        load_cifar10(archive, checksums={archive.name: hashlib.md5(archive.read_bytes()).hexdigest()})
    msg = str(err.value)
    assert re.search(f"cifar-10-binary.tar.gz: {reason}", msg) and "\n" not in msg, msg
    assert not (tmp_path / "dl" / "extracted" / "cifar-10-batches-bin").exists()


def test_cifar_oversized_archive_is_refused_before_hashing(tmp_path):
    archive = tmp_path / "cifar-10-python.tar.gz"
    _sparse(archive, (256 << 20) + 1)  # sparse: refused by its size, never read
    with pytest.raises(ValueError, match=r"cifar-10-python.tar.gz: 268435457 bytes, more than 268435456; the official"):
        load_cifar10(archive, checksums={archive.name: "0" * 32})
