"""What a study is, for the command line and the runner: one ``Study`` record per study.

A study module defines ``STUDY = Study(...)``: its name (the subcommand, and the study named in
``manifest.json``), its presets (frozen config dataclasses), the flags that replace their fields,
its shards, its shard worker, its shard check, its summary and the function that runs it. The
``manifold-mixup`` command builds one subcommand per ``STUDY`` found in
``manifold_mixup.paper.studies`` (``studies()``): a new study needs nothing else to appear there.

Study modules import torch only inside their functions, so that ``--help`` stays fast.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

__all__ = ["Flag", "Study", "studies"]


class Flag(NamedTuple):
    """A command-line flag that sets the config field (or ``run`` keyword) ``field``; the flag is
    ``--`` + the field's name with dashes. ``nargs`` as argparse's (a list flag gives a tuple);
    ``choices``: the allowed values, from the constants the config checks against."""

    field: str
    type: Callable[[str], Any]
    metavar: str | tuple[str, ...]
    help: str
    nargs: int | str | None = None
    choices: Sequence[Any] | None = None

    @property
    def flag(self) -> str:
        return "--" + self.field.replace("_", "-")


@dataclass(frozen=True)
class Study:
    """One study, registered once.

    name: the subcommand, and the study named in ``manifest.json``. help: one line for the list
    of commands; description: the subcommand's ``--help`` text (plain text). presets: named
    configs; default_preset: the one used without ``--preset`` (None: the first); preset_help:
    what they are. flags: the config fields a
    flag may replace. options: ``run`` keywords that are not settings of the results (a device,
    a number of worker processes). run: ``run(cfg, out, progress=..., **options) -> dict``;
    brief: what the command prints of that result. shards, worker, check, summarise: the
    study's shards (``cfg -> ShardList``), the worker that computes one shard's rows, the check
    of a shard's rows and the summary of all rows; None for a figure computed in one piece
    (then the command has no executor flags).
    """

    name: str
    help: str
    description: str
    presets: Mapping[str, Any]
    flags: Sequence[Flag]
    run: Callable[..., dict]
    brief: Callable[[dict], Any]
    default_preset: str | None = None
    preset_help: str = ""
    options: Sequence[Flag] = ()
    out_help: str = "output folder (rerun the same command to resume)"
    shards: Callable[..., Any] | None = None
    worker: Callable[[dict], list] | None = None
    check: Callable[[dict, list], str | None] | None = None
    summarise: Callable[..., Any] | None = None

    @property
    def default(self) -> str:
        """The name of the preset used without ``--preset``."""
        return self.default_preset or next(iter(self.presets))

    @property
    def sharded(self) -> bool:
        return self.shards is not None


def studies() -> dict[str, Study]:
    """Every registered study by name: the ``STUDY`` of each module of this package, in the
    order of the modules' names. A module that cannot be imported, two studies of one name, or a
    flag that names no field of the study's presets (nor a keyword of its ``run``) is an error
    that names the module."""
    from . import __name__ as package, __path__ as path

    found: dict[str, tuple[str, Study]] = {}
    for info in sorted(pkgutil.iter_modules(path), key=lambda m: m.name):
        module = f"{package}.{info.name}"
        try:
            study = getattr(importlib.import_module(module), "STUDY", None)
        except Exception as e:  # one line that names the module, whatever went wrong in it
            raise ImportError(f"{module} cannot be imported ({type(e).__name__}: {e}); "
                              "fix it or remove it from the studies package") from e
        if not isinstance(study, Study):
            continue
        if study.name in found:
            raise ValueError(f"{module} registers a study named {study.name!r}, as {found[study.name][0]} does; "
                             "give each study its own name")
        _check_flags(module, study)
        found[study.name] = (module, study)
    return {name: study for name, (_, study) in found.items()}


def _check_flags(module: str, study: Study) -> None:
    import inspect
    from dataclasses import fields

    keywords = set(inspect.signature(study.run).parameters)
    for label, cfg in study.presets.items():
        names = {f.name for f in fields(cfg)}
        for flag in study.flags:
            if flag.field not in names:
                raise ValueError(f"{module}: flag {flag.flag} sets {flag.field!r}, which is not a field of the "
                                 f"{label!r} preset's {type(cfg).__name__}")
    for flag in study.options:
        if flag.field not in keywords:
            raise ValueError(f"{module}: option {flag.flag} is not a keyword of {study.run.__name__}()")
