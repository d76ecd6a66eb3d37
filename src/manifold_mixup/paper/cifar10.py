"""CIFAR-10 from a local copy, read offline in its official formats.

Nothing here downloads anything. CIFAR-10 is read from a local directory in its official
binary format (``cifar-10-batches-bin``, plain bytes, no pickle) or its python format
(``cifar-10-batches-py``): its opcodes are scanned first (bounded count, nesting and sizes, only
the numpy globals that rebuild arrays), then a restricted unpickler builds arrays only from data
bytes of their exact size, and the dict is checked against the official layout; any file that is
not that layout is refused in one short line naming it. The official ``.tar.gz`` archives are
accepted too: their MD5 is checked against the published checksum before anything is extracted.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import pickletools
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..checks import STUDY_SEED_MAX, check_real, check_seed
from .images import ImageDataset, make_dataset, train_subset

__all__ = ["CIFAR10_MD5", "load_cifar10", "BIN_FOLDER", "PY_FOLDER"]


#: Published MD5 digests of the official CIFAR-10 archives, keyed by archive file name.
CIFAR10_MD5: Mapping[str, str] = {
    "cifar-10-binary.tar.gz": "c32a1d4ab5d03f1284b67883e8d87530",
    "cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a",
}


BIN_FOLDER = "cifar-10-batches-bin"


PY_FOLDER = "cifar-10-batches-py"


# Archive name -> the folder it unpacks to.
_ARCHIVE_FOLDER = {
    "cifar-10-binary.tar.gz": BIN_FOLDER,
    "cifar-10-python.tar.gz": PY_FOLDER,
}


_FORMAT_FILES = {
    BIN_FOLDER: (
        [f"data_batch_{i}.bin" for i in range(1, 6)],
        ["test_batch.bin"],
    ),
    PY_FOLDER: (
        [f"data_batch_{i}" for i in range(1, 6)],
        ["test_batch"],
    ),
}


_CIFAR_CLASSES = 10


_CIFAR_PIXELS = 3 * 32 * 32  # 3072 bytes: 1024 red, then 1024 green, then 1024 blue


_CIFAR_RECORD = 1 + _CIFAR_PIXELS  # binary record: 1 label byte + pixels


# Bounds of the official layout. A batch holds 10,000 images (the readers accept 1 to 10,000 so
# that tests can write small ones); a python-format batch file is ~31 MB, and up to ~62 MB when
# Python 3 re-pickled it with protocol 2 (the raw bytes then written as UTF-8 text).
_BATCH_MAX_IMAGES = 10_000


_PY_MAX_BYTES = 64 << 20


_PY_MAX_OPS = 250_000  # an official batch holds ~31,000 opcodes; re-pickled by Python 3, ~92,000


_PY_MAX_DEPTH = 6  # nesting of tuples, lists and dicts; the official layout needs 3


_PY_MAX_TEXT = 256  # a key, batch label, file name, dtype or global name


_PY_KEYS = (b"data", b"labels", b"batch_label", b"filenames")


_TAR_MAX_MEMBERS = 64  # the official archives hold 8


_ARCHIVE_MAX_BYTES = 256 << 20  # the official archives are 170,052,171 and 170,498,071 bytes


class _Refused(pickle.UnpicklingError):
    """A python batch that is not the official layout; the message is one short line."""


def _show(value: object) -> str:
    """A short one-line description of a value read from a file (never its whole repr)."""
    if isinstance(value, (bytes, bytearray, str)):
        head = repr(value[:40])
        return head if len(value) <= 40 else f"{head}... ({len(value)} characters)"
    if type(value) is int and abs(value) < 2**64:
        return repr(value)
    return type(value).__name__


def _one_line(text: object, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit] + "..."


def _text(value: object) -> str | None:
    """``value`` as str if it is short text (bytes read as latin-1), else None."""
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value[: _PY_MAX_TEXT + 1]).decode("latin1")
    return value if isinstance(value, str) and len(value) <= _PY_MAX_TEXT else None


def _latin1_bytes(text: object, encoding: object) -> bytes:
    """``_codecs.encode`` as protocol 2 uses it for bytes written by Python 3: latin-1 only."""
    if encoding != "latin1" or not isinstance(text, str):
        raise _Refused(f"refusing _codecs.encode with encoding {_show(encoding)}: only 'latin1' rebuilds bytes")
    try:
        return text.encode("latin1")
    except UnicodeEncodeError:
        raise _Refused("refusing _codecs.encode of text that is not latin-1") from None


class _NdarrayName:
    """What ``numpy.ndarray`` resolves to: the first argument ``_reconstruct`` expects, never
    called (``numpy.ndarray(shape)`` is an array of uninitialised memory)."""

    def __call__(self, *args: object) -> None:
        raise _Refused("numpy.ndarray is called directly: an array must be rebuilt from its data bytes")


_NDARRAY = _NdarrayName()


_DTYPES = ("u1", "i1", "u2", "i2", "u4", "i4", "u8", "i8")


class _DType:
    """``numpy.dtype(name, align, copy)`` then ``__setstate__``: plain integer types only."""

    def __init__(self, name: object, align: object = False, copy: object = True) -> None:
        text = _text(name)
        if text not in _DTYPES or align not in (False, 0) or copy not in (True, 1):
            raise _Refused(f"refusing dtype {_show(name)}: CIFAR-10 arrays are integers ({', '.join(_DTYPES)})")
        self.dtype = np.dtype(text)
        self._built = False

    def __setstate__(self, state: object) -> None:
        # numpy writes (3, byte order, None, None, None, -1, -1, 0) for a plain integer type.
        ok = type(state) is tuple and len(state) in (8, 9) and not self._built
        order = _text(state[1]) if ok else None
        if (order not in ("<", ">", "|", "=") or state[0] not in (3, 4)
                or state[2:8] != (None, None, None, -1, -1, 0) or state[8:] not in ((), (None,))):
            raise _Refused(f"refusing the state of dtype {self.dtype.str}: not a plain integer type")
        self.dtype = self.dtype.newbyteorder("=" if order == "|" else order)
        self._built = True


class _Array:
    """An array rebuilt from data bytes of exactly its size (``array`` is None until then)."""

    def __init__(self) -> None:
        self.array: np.ndarray | None = None

    def fill(self, shape: object, dtype: object, data: object, fortran: bool) -> None:
        if self.array is not None:
            raise _Refused("an array's state is given twice")
        if not isinstance(dtype, _DType):
            raise _Refused(f"an array's dtype is {_show(dtype)}, not a numpy.dtype")
        if (type(shape) is not tuple or not 1 <= len(shape) <= 2
                or not all(type(n) is int and 0 <= n <= _BATCH_MAX_IMAGES * _CIFAR_PIXELS for n in shape)):
            raise _Refused(f"an array's shape must be 1 or 2 ints in [0, {_BATCH_MAX_IMAGES * _CIFAR_PIXELS}]; "
                           f"got {_show(shape) if type(shape) is not tuple else tuple(map(_show, shape[:3]))}")
        need = int(np.prod(shape, dtype=np.int64)) * dtype.dtype.itemsize
        if not isinstance(data, (bytes, bytearray)) or len(data) != need:
            got = f"{len(data)} bytes" if isinstance(data, (bytes, bytearray)) else f"a {_show(data)}"
            raise _Refused(f"an array of shape {shape} {dtype.dtype.name} needs {need} data bytes; got {got}")
        self.array = np.frombuffer(data, dtype=dtype.dtype).reshape(shape, order="F" if fortran else "C")

    def __setstate__(self, state: object) -> None:
        # numpy writes (1, shape, dtype, is_fortran, data bytes).
        if type(state) is not tuple or len(state) != 5 or state[0] != 1 or state[3] not in (False, True):
            raise _Refused("an array's state is not numpy's (1, shape, dtype, is_fortran, data bytes)")
        self.fill(state[1], state[2], state[4], bool(state[3]))


def _reconstruct(subtype: object, shape: object, typecode: object) -> _Array:
    """numpy's ``_reconstruct(ndarray, (0,), b'b')``: an empty array that ``__setstate__`` fills."""
    if subtype is not _NDARRAY or shape != (0,) or _text(typecode) != "b":
        raise _Refused(f"refusing _reconstruct of shape {_show(shape) if type(shape) is not tuple else shape[:3]}: "
                       "numpy pickles (ndarray, (0,), b'b'), then the data bytes")
    return _Array()


def _frombuffer(buffer: object, dtype: object, shape: object, order: object) -> _Array:
    """numpy's protocol-5 ``_frombuffer(buffer, dtype, shape, order)``."""
    if _text(order) not in ("C", "F"):
        raise _Refused(f"refusing _frombuffer with order {_show(order)}")
    array = _Array()
    array.fill(shape, dtype, buffer, _text(order) == "F")
    return array


# The globals a CIFAR-10 batch may name (numpy < 2 writes numpy.core, numpy >= 2 numpy._core) and
# what each resolves to. Protocols 2-4 rebuild an array by _reconstruct then its state, protocol 5
# by _frombuffer; protocol 2 written by Python 3 rebuilds bytes by _codecs.encode(text, 'latin1').
_PY_GLOBALS: dict[str, object] = {
    "numpy.core.multiarray._reconstruct": _reconstruct,
    "numpy._core.multiarray._reconstruct": _reconstruct,
    "numpy.core.numeric._frombuffer": _frombuffer,
    "numpy._core.numeric._frombuffer": _frombuffer,
    "numpy.ndarray": _NDARRAY,
    "numpy.dtype": _DType,
    "_codecs.encode": _latin1_bytes,
}


_RECONSTRUCT_NAMES = tuple(k for k, v in _PY_GLOBALS.items() if v is _reconstruct)


# The opcodes numpy's and Python's picklers write for a dict of arrays, lists, ints and strings.
_PY_OPCODES = frozenset(
    "PROTO FRAME STOP MARK NONE NEWTRUE NEWFALSE BININT BININT1 BININT2 LONG1 SHORT_BINSTRING BINSTRING "
    "SHORT_BINBYTES BINBYTES BINBYTES8 BYTEARRAY8 SHORT_BINUNICODE BINUNICODE BINUNICODE8 EMPTY_TUPLE TUPLE "
    "TUPLE1 TUPLE2 TUPLE3 EMPTY_LIST APPEND APPENDS EMPTY_DICT SETITEM SETITEMS PUT BINPUT LONG_BINPUT "
    "MEMOIZE GET BINGET LONG_BINGET GLOBAL STACK_GLOBAL REDUCE BUILD".split()
)


class _Node:
    """What the pre-scan knows of one value on the pickle stack."""

    __slots__ = ("kind", "depth", "text")

    def __init__(self, kind: str, depth: int = 0, text: str | None = None) -> None:
        self.kind = kind  # scalar, text, long text, tuple, list, dict, global, object (a call's result)
        self.depth = depth  # nesting of tuples, lists and dicts
        self.text = text  # the short text, the global's name, or the name of the call that made it


def _scan_pickle(blob: bytes) -> None:
    """Refuse a pickle that is not a CIFAR-10 batch before anything is built from it.

    Walks the opcodes (``pickletools.genops``: a loop, no recursion) and follows the stack
    abstractly: only the opcodes of ``_PY_OPCODES``, at most ``_PY_MAX_OPS`` of them; tuples,
    lists and dicts nested at most ``_PY_MAX_DEPTH`` deep; ints of 64 bits; dict keys that are
    short text; only the globals of ``_PY_GLOBALS`` and no call of ``numpy.ndarray``; no list or
    dict read twice from the memo (shared or recursive); one dict at the end and nothing after it.
    """
    stack: list[_Node] = []
    marks: list[int] = []
    memo: dict[int, _Node] = {}

    def floor() -> int:
        return marks[-1] if marks else 0

    def pop(pos: int) -> _Node:
        if len(stack) <= floor():
            raise _Refused(f"malformed pickle: stack underflow at byte {pos}")
        return stack.pop()

    def pop_mark(pos: int) -> list[_Node]:
        if not marks:
            raise _Refused(f"malformed pickle: no MARK before byte {pos}")
        items = stack[marks[-1]:]
        del stack[marks.pop():]
        return items

    def container(kind: str, items: list[_Node], pos: int) -> _Node:
        node = _Node(kind, 1 + max((v.depth for v in items), default=0))
        if node.depth > _PY_MAX_DEPTH:
            raise _Refused(f"values nested deeper than {_PY_MAX_DEPTH} levels at byte {pos}")
        return node

    def grow(kind: str, items: list[_Node], pos: int) -> None:
        if len(stack) <= floor() or stack[-1].kind != kind:
            raise _Refused(f"malformed pickle: items added to no {kind} at byte {pos}")
        stack[-1].depth = max(stack[-1].depth, container(kind, items, pos).depth)

    count, stopped = 0, False
    try:
        for op, arg, pos in pickletools.genops(blob):
            count += 1
            name = op.name
            if count > _PY_MAX_OPS:
                raise _Refused(f"more than {_PY_MAX_OPS} pickle opcodes; an official batch has ~31,000")
            if name not in _PY_OPCODES:
                raise _Refused(f"opcode {name} at byte {pos} is not used by CIFAR-10 batches")
            if name == "FRAME" and arg > len(blob) - pos:
                raise _Refused(f"a frame of {arg} bytes at byte {pos}, past the end of the file")
            if name in ("PROTO", "FRAME"):
                continue
            if name == "STOP":
                if marks or len(stack) != 1 or stack[0].kind != "dict":
                    raise _Refused("the pickle does not end with one dict")
                if pos + 1 != len(blob):
                    raise _Refused(f"{len(blob) - pos - 1} bytes follow the end of the pickle")
                stopped = True
            elif name == "MARK":
                marks.append(len(stack))
                if len(marks) > _PY_MAX_DEPTH:
                    raise _Refused(f"values nested deeper than {_PY_MAX_DEPTH} levels at byte {pos}")
            elif name in ("NONE", "NEWTRUE", "NEWFALSE", "BININT", "BININT1", "BININT2", "LONG1"):
                if name == "LONG1" and not -(2**63) <= arg < 2**63:
                    raise _Refused(f"an integer wider than 64 bits at byte {pos}")
                stack.append(_Node("scalar"))
            elif op.arg is not None and op.arg.name in ("string1", "string4", "bytes1", "bytes4", "bytes8",
                                                        "bytearray8", "unicodestring1", "unicodestring4",
                                                        "unicodestring8"):
                text = _text(arg)
                stack.append(_Node("text" if text is not None else "long text", text=text))
            elif name in ("EMPTY_TUPLE", "EMPTY_LIST", "EMPTY_DICT"):
                stack.append(_Node(name[6:].lower(), 1))
            elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
                items = [pop(pos) for _ in range(int(name[-1]))][::-1]
                stack.append(container("tuple", items, pos))
            elif name == "TUPLE":
                stack.append(container("tuple", pop_mark(pos), pos))
            elif name in ("APPEND", "APPENDS"):
                grow("list", [pop(pos)] if name == "APPEND" else pop_mark(pos), pos)
            elif name in ("SETITEM", "SETITEMS"):
                items = [pop(pos), pop(pos)][::-1] if name == "SETITEM" else pop_mark(pos)
                if len(items) % 2:
                    raise _Refused(f"malformed pickle: a key without a value at byte {pos}")
                for key in items[::2]:
                    if key.kind not in ("text", "object"):
                        raise _Refused(f"a dict key that is a {key.kind} at byte {pos}; CIFAR-10 keys are short names")
                grow("dict", items, pos)
            elif name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
                if len(stack) <= floor():
                    raise _Refused(f"malformed pickle: stack underflow at byte {pos}")
                index = len(memo) if name == "MEMOIZE" else arg
                if not 0 <= index < _PY_MAX_OPS:  # the unpickler sizes its memo by the largest index
                    raise _Refused(f"memo index {_show(index)} at byte {pos}; a batch numbers its values from 0")
                memo[index] = stack[-1]
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                if arg not in memo:
                    raise _Refused(f"malformed pickle: memo entry {_show(arg)} read before it is written, at byte {pos}")
                if memo[arg].kind in ("list", "dict"):
                    raise _Refused(f"a {memo[arg].kind} used twice (shared or recursive) at byte {pos}")
                stack.append(memo[arg])
            elif name in ("GLOBAL", "STACK_GLOBAL"):
                if name == "GLOBAL":
                    full = ".".join(arg.split(" ", 1))
                else:
                    attr, module = pop(pos), pop(pos)
                    full = f"{module.text}.{attr.text}" if module.text and attr.text else "(a long name)"
                if full not in _PY_GLOBALS:
                    raise _Refused(f"refusing to load global {_one_line(full, 80)}: a CIFAR-10 python batch may "
                                   f"only reference {', '.join(_PY_GLOBALS)}")
                stack.append(_Node("global", text=full))
            elif name == "REDUCE":
                args, func = pop(pos), pop(pos)
                if func.text == "numpy.ndarray":
                    raise _Refused(f"a call of numpy.ndarray at byte {pos} (an array of uninitialised memory); "
                                   "arrays are rebuilt from their data bytes")
                if func.kind != "global" or args.kind != "tuple":
                    raise _Refused(f"a call of a {func.kind} with a {args.kind} at byte {pos}")
                stack.append(_Node("object", text=func.text))
            elif name == "BUILD":
                state = pop(pos)
                target = stack[-1] if len(stack) > floor() else _Node("nothing")
                if target.kind != "object" or target.text not in (*_RECONSTRUCT_NAMES, "numpy.dtype") or state.kind != "tuple":
                    raise _Refused(f"a {state.kind} given as the state of a {target.kind} at byte {pos}")
    except ValueError as e:  # from genops: truncated data, a bad argument
        raise _Refused(f"not a complete pickle ({_one_line(e, 120)})") from None
    if not stopped:
        raise _Refused("not a complete pickle (no STOP)")


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the names of ``_PY_GLOBALS``, each to a checked rebuilder.

    Run after :func:`_scan_pickle`. Anything else (``os.system``, ``builtins.eval``, any class)
    is refused naming the global, so a malicious file cannot run code; the rebuilders refuse an
    array without data bytes of exactly its size, non-integer dtypes and text that is not latin-1.
    """

    def find_class(self, module: str, name: str) -> object:
        full = f"{module}.{name}"
        if full not in _PY_GLOBALS:
            raise _Refused(f"refusing to load global {_one_line(full, 80)}: a CIFAR-10 python batch may only "
                           f"reference {', '.join(_PY_GLOBALS)}")
        return _PY_GLOBALS[full]

    def persistent_load(self, pid: object) -> object:
        raise _Refused(f"refusing persistent id {_show(pid)} in a CIFAR-10 batch")


def _check_python_batch(obj: object) -> tuple[np.ndarray, np.ndarray]:
    """The official layout of an unpickled batch, without recursion: a dict whose keys are among
    ``_PY_KEYS``; b'data' uint8 ``[n, 3072]``, 1 <= n <= 10,000; b'labels' n ints (a list, or a 1-D
    integer array); b'batch_label' short text; b'filenames' n short texts. Returns data, labels."""
    if type(obj) is not dict:
        raise _Refused(f"the pickle holds a {type(obj).__name__}, not a dict")
    for key in obj:
        if type(key) is not bytes or key not in _PY_KEYS:
            raise _Refused(f"unexpected key {_show(key)}; a batch holds {', '.join(map(repr, _PY_KEYS))}")
    for key in (b"data", b"labels"):
        if key not in obj:
            raise _Refused(f"no key {key!r}; a batch holds b'data' and b'labels'")
    if isinstance(obj[b"data"], _Array) and obj[b"data"].array is None:
        raise _Refused("b'data' is an array without its data bytes")
    data = obj[b"data"].array if isinstance(obj[b"data"], _Array) else None
    if (data is None or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _CIFAR_PIXELS
            or not 1 <= data.shape[0] <= _BATCH_MAX_IMAGES):
        got = f"{data.dtype} {data.shape}" if data is not None else _show(obj[b"data"])
        raise _Refused(f"b'data' must be a uint8 array [n, {_CIFAR_PIXELS}] with 1 <= n <= {_BATCH_MAX_IMAGES}; got {got}")
    n = data.shape[0]
    labels = obj[b"labels"]
    if isinstance(labels, _Array) and labels.array is not None and labels.array.ndim == 1 and labels.array.dtype.kind in "iu":
        labels = labels.array
    elif type(labels) is not list or not all(type(v) is int and -(2**63) <= v < 2**63 for v in labels):
        raise _Refused(f"b'labels' must be a list of ints or a 1-D integer array; got {_show(labels)}")
    if len(labels) != n:
        raise _Refused(f"{n} images but {len(labels)} labels; they must match")
    label = obj.get(b"batch_label", b"")
    if type(label) not in (bytes, str) or len(label) > _PY_MAX_TEXT:
        raise _Refused(f"b'batch_label' must be text of at most {_PY_MAX_TEXT} characters; got {_show(label)}")
    names = obj.get(b"filenames", [b""] * n)
    if type(names) is not list or len(names) != n or not all(
        type(v) in (bytes, str) and len(v) <= _PY_MAX_TEXT for v in names
    ):
        raise _Refused(f"b'filenames' must be a list of {n} texts of at most {_PY_MAX_TEXT} characters")
    # uint64 labels above 2**63 wrap to negatives here, which the range check refuses.
    return data, np.asarray(labels).astype(np.int64)


def _read_bounded(path: Path, limit: int) -> bytes:
    """The bytes of ``path``, refused by name when there are more than ``limit``."""
    with open(path, "rb") as f:
        blob = f.read(limit + 1)
    if len(blob) > limit:
        raise ValueError(f"{path}: more than {limit} bytes; an official CIFAR-10 batch is smaller")
    return blob


def _read_python_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one python-format batch: uint8 ``[n, 3, 32, 32]`` and int64 ``[n]``.

    The file is read whole (bounded), scanned (:func:`_scan_pickle`), unpickled by
    :class:`_RestrictedUnpickler` and checked against the official layout; any refusal is one
    short line naming the file."""
    blob = _read_bounded(path, _PY_MAX_BYTES)
    try:
        _scan_pickle(blob)
        data, labels = _check_python_batch(_RestrictedUnpickler(io.BytesIO(blob), encoding="bytes").load())
    except pickle.UnpicklingError as e:  # _Refused included
        raise ValueError(f"{path}: not a CIFAR-10 python batch: {_one_line(e)}") from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, OverflowError) as e:
        raise ValueError(
            f"{path}: not a readable CIFAR-10 python batch ({type(e).__name__}: {_one_line(e)})"
        ) from e
    _check_labels(path, labels)
    return data.reshape(-1, 3, 32, 32), labels


def _read_binary_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one binary-format batch: uint8 ``[n, 3, 32, 32]`` and int64 ``[n]``."""
    raw = np.frombuffer(_read_bounded(path, _BATCH_MAX_IMAGES * _CIFAR_RECORD), dtype=np.uint8)
    if raw.size == 0 or raw.size % _CIFAR_RECORD:  # the file changed since _check_files
        raise ValueError(f"{path}: {raw.size} bytes is not a whole number of {_CIFAR_RECORD}-byte records")
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
        if fmt == BIN_FOLDER and size % _CIFAR_RECORD != 0:
            raise ValueError(
                f"{p}: size {size} bytes is not a multiple of the {_CIFAR_RECORD}-byte "
                f"record (1 label byte + {_CIFAR_PIXELS} pixel bytes); the official batches "
                f"are {10000 * _CIFAR_RECORD} bytes"
            )
        if fmt == BIN_FOLDER and size > _BATCH_MAX_IMAGES * _CIFAR_RECORD:
            raise ValueError(
                f"{p}: {size // _CIFAR_RECORD} records, more than the {_BATCH_MAX_IMAGES} of an official batch"
            )
        if fmt == PY_FOLDER and size > _PY_MAX_BYTES:
            raise ValueError(f"{p}: {size} bytes, more than the {_PY_MAX_BYTES} a python batch may have (official: ~31 MB)")
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
    size = path.stat().st_size
    if size > _ARCHIVE_MAX_BYTES:
        raise ValueError(f"{path}: {size} bytes, more than {_ARCHIVE_MAX_BYTES}; the official archives are ~170 MB")
    actual = _md5(path)
    if actual.lower() != expected.lower():
        raise ValueError(
            f"checksum mismatch for {path}: expected MD5 {expected}, got {actual}; the file "
            f"is corrupt, incomplete or not the official archive; refusing to extract it"
        )
    return _ARCHIVE_FOLDER[path.name]


def _safe_members(tar: tarfile.TarFile, archive: Path) -> list[tarfile.TarInfo]:
    """Regular files and folders of ``tar`` with relative paths; refuse anything else."""
    members = []
    for m in tar:  # read lazily: at most _TAR_MAX_MEMBERS headers
        members.append(m)
        if len(members) > _TAR_MAX_MEMBERS:
            raise ValueError(f"{archive}: more than {_TAR_MAX_MEMBERS} members; an official archive has 8")
        parts = Path(m.name).parts
        if m.name.startswith(("/", "\\")) or Path(m.name).is_absolute() or ".." in parts:
            raise ValueError(f"{archive}: refusing unsafe member path {_show(m.name)}")
        if not (m.isfile() or m.isdir()):
            raise ValueError(
                f"{archive}: refusing member {_show(m.name)}: only regular files and folders are "
                f"allowed, not links or devices"
            )
        if m.size > _PY_MAX_BYTES:
            raise ValueError(f"{archive}: member {_show(m.name)} has {m.size} bytes, more than a CIFAR-10 batch")
    return members


def _extract(archive: Path, folder: str, cache_dir: Path) -> Path:
    """Extract ``archive`` (already verified) so that ``cache_dir/folder`` appears atomically."""
    target = cache_dir / folder
    if target.is_dir():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=cache_dir))
    try:
        try:
            with tarfile.open(archive, "r:gz") as tar:
                members = _safe_members(tar, archive)
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(tmp, members=members, filter="data")
                else:  # pragma: no cover - Python without extraction filters
                    tar.extractall(tmp, members=members)
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:  # truncated or corrupt
            raise ValueError(f"{archive}: not a readable .tar.gz archive ({type(e).__name__}: {_one_line(e)})") from e
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
            f"{BIN_FOLDER}/, {PY_FOLDER}/ or one of {sorted(checksums)}, or the archive"
        )
    cache = cache_dir if cache_dir is not None else data_dir / "extracted"
    looked: list[str] = []
    # 1. The batches themselves, directly in data_dir or in the official folder.
    for fmt in (BIN_FOLDER, PY_FOLDER):
        train, test = _FORMAT_FILES[fmt]
        if any((data_dir / n).exists() for n in train + test):
            return data_dir, fmt
        looked.append(f"{data_dir}/{{{','.join(train + test)}}}")
    for fmt in (BIN_FOLDER, PY_FOLDER):
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
    for fmt in (BIN_FOLDER, PY_FOLDER):
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
    batches are preferred over python ones; python batches are scanned, then unpickled by a
    restricted unpickler that rebuilds arrays only from their data bytes, then checked against
    the official layout (keys, dtypes, shapes, label range, at most 10,000 images a batch).

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
        ValueError: checksum mismatch; an unsafe, corrupt or oversized archive; a batch file
            of the wrong size or not the official layout (one line naming the file).
    """
    if data_dir is None:
        raise ValueError("data_dir is required for CIFAR-10: a folder or archive path")
    train_fraction = check_real("train_fraction", train_fraction, 0, 1, low_open=True)
    seed = check_seed("seed", seed, STUDY_SEED_MAX)
    table = CIFAR10_MD5 if checksums is None else checksums
    folder, fmt = _locate_cifar10(
        Path(data_dir), None if cache_dir is None else Path(cache_dir), table
    )
    paths = _check_files(folder, fmt)
    read = _read_binary_batch if fmt == BIN_FOLDER else _read_python_batch
    n_train = len(_FORMAT_FILES[fmt][0])
    batches = [read(p) for p in paths]
    x_train = np.concatenate([b[0] for b in batches[:n_train]])
    y_train = np.concatenate([b[1] for b in batches[:n_train]])
    x_test = np.concatenate([b[0] for b in batches[n_train:]])
    y_test = np.concatenate([b[1] for b in batches[n_train:]])
    keep = train_subset(y_train, train_fraction, seed, _CIFAR_CLASSES)
    if len(keep) < len(y_train):
        x_train, y_train = x_train[keep], y_train[keep]
    return make_dataset(x_train, y_train, x_test, y_test, num_classes=10, name="cifar10")
