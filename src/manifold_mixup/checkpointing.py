"""A mixer call's plan under activation checkpointing: the recomputation applies it again.

``torch.utils.checkpoint`` (reentrant or not, and what builds on it: Hugging Face
``gradient_checkpointing_enable()``, ``checkpoint_sequential``, per-block checkpointing) runs
part of a forward again during backward. Where that part holds the mixed run of a layer, the
recomputation must mix again with the same plan, and nothing else may be mixed.

Each checkpoint invocation gets a key: a token stored on the object that torch keeps for that
invocation as long as its graph lives (the reentrant ``CheckpointFunction``'s ctx, the
non-reentrant ``_CheckpointFrame``), found from the running Python frames. A mixed run inside
checkpointed code is recorded with the keys around it (``expect``); while records exist, one
global module forward hook (not on any model: a copy of a model carries nothing) mixes a run of a
recorded module exactly when the keys around that run meet the record's, that is, when it is a
recomputation of the mixed run. Keys of checkpoints met during a recomputation (nested
checkpoints) join the record. A record goes when its invocations' graphs are freed.
"""

from __future__ import annotations

import sys
import threading
import weakref
from collections.abc import Callable
from typing import Any

import torch
import torch.utils.checkpoint as _checkpoint
from torch import nn
from torch.nn.modules.module import register_module_forward_hook

__all__ = ["checkpoint_keys", "expect", "pending"]

_FILE = _checkpoint.__file__
_ATTR = "_manifold_mixup_key"


class _Key:
    """The token of one checkpoint invocation (lives as long as that invocation's graph)."""

    __slots__ = ("__weakref__",)


def _key_of(obj: Any) -> _Key:
    key = getattr(obj, _ATTR, None)
    if key is None:
        key = _Key()
        setattr(obj, _ATTR, key)
    return key


def checkpoint_keys() -> list[_Key]:
    """The keys of the checkpoint invocations around the running code, innermost first: empty
    outside checkpointed code. Reads torch.utils.checkpoint's own frames: the reentrant
    ``CheckpointFunction.forward``/``backward`` (their ctx), the non-reentrant ``checkpoint``
    (its generator's frame object) and its ``unpack_hook``, which recomputes (its frame object)."""
    keys = []
    f = sys._getframe(1)
    while f is not None:
        code = f.f_code
        if code.co_filename == _FILE:
            name, obj = code.co_qualname, None
            if name in ("CheckpointFunction.forward", "CheckpointFunction.backward"):
                obj = f.f_locals.get("ctx")
            elif name == "checkpoint":
                gen = f.f_locals.get("gen")
                if gen is not None and gen.gi_frame is not None:
                    obj = gen.gi_frame.f_locals.get("new_frame")
            elif name.endswith("unpack_hook"):
                obj = f.f_locals.get("frame")
            if obj is not None:
                keys.append(_key_of(obj))
        f = f.f_back
    return keys


class _Record:
    """A mixed run that a recomputation must mix again: its module, how to mix an output, and the
    keys of the checkpoint invocations around it."""

    def __init__(self, module: nn.Module, name: str, apply: Callable[[Any], Any], keys: list[_Key]) -> None:
        self.module = weakref.ref(module)
        self.name, self.apply = name, apply
        self.keys: list[weakref.ref] = []
        self.add(keys)

    def add(self, keys: list[_Key]) -> None:
        have = {id(k()) for k in self.keys}
        self.keys += [weakref.ref(k, _prune) for k in keys if id(k) not in have]

    def alive(self) -> bool:
        return self.module() is not None and any(k() is not None for k in self.keys)

    def meets(self, ids: set[int]) -> bool:
        return any((k := w()) is not None and id(k) in ids for w in self.keys)


_lock = threading.RLock()
_records: dict[int, list[_Record]] = {}  # id(module) -> records
_handle = None


def expect(module: nn.Module, name: str, apply: Callable[[Any], Any], keys: list[_Key]) -> None:
    """Record that ``module``'s run inside the checkpoint invocations ``keys`` was mixed by
    ``apply(output) -> mixed output``: recomputations of that run will be mixed the same way."""
    global _handle
    with _lock:
        _records.setdefault(id(module), []).append(_Record(module, name, apply, keys))
        if _handle is None:
            _handle = register_module_forward_hook(_recompute)


def pending() -> int:
    """How many mixed runs may still be recomputed (their graphs are alive)."""
    _prune()
    with _lock:
        return sum(len(v) for v in _records.values())


def _prune(_: Any = None) -> None:
    """Drop records whose graphs are gone; the global hook goes with the last one."""
    global _handle
    with _lock:
        for mid in list(_records):
            live = [r for r in _records[mid] if r.alive()]
            if live:
                _records[mid] = live
            else:
                del _records[mid]
        if not _records and _handle is not None:
            _handle.remove()
            _handle = None


def _recompute(module: nn.Module, args: Any, output: Any) -> Any:
    """The global forward hook: mixes a recomputation of a recorded mixed run, nothing else."""
    recs = _records.get(id(module))
    if not recs or torch.compiler.is_compiling():
        return None
    chain = checkpoint_keys()
    if not chain:
        return None
    ids = {id(k) for k in chain}
    with _lock:
        hits = [r for r in recs if r.module() is module and r.meets(ids)]
        if not hits:
            return None
        if len(hits) > 1:
            raise RuntimeError(
                f"layer {hits[0].name!r} is recomputed in backward (activation checkpointing) inside code "
                f"that holds {len(hits)} mixed runs of it: the mixer cannot tell which one this is")
        rec = hits[0]
        rec.add(chain)  # checkpoints met in this recomputation (nested ones) recompute it later
    return rec.apply(output)
