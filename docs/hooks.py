"""mkdocs hook: the reference page of the top-level package documents exactly ``manifold_mixup.__all__``.

The package imports its names on first use (PEP 562), which static analysis cannot follow. This
hook replaces the marker below with one mkdocstrings directive per public name, at the module that
defines it, so the page follows the package without a hand-kept list.
"""

from __future__ import annotations

import importlib

MARKER = "<!-- api: manifold_mixup.__all__ -->"


def on_page_markdown(markdown: str, **kwargs) -> str:
    if MARKER not in markdown:
        return markdown
    package = importlib.import_module("manifold_mixup")
    directives = []
    for name in package.__all__:
        obj = getattr(package, name)
        module = getattr(obj, "__module__", None)
        if module is None or getattr(importlib.import_module(module), name, None) is not obj:
            raise ValueError(f"manifold_mixup.{name} is not a class or function defined under that name in its module")
        directives.append(f"::: {module}.{name}\n    options:\n      show_root_full_path: false\n")
    return markdown.replace(MARKER, "\n".join(directives))
