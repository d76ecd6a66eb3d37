"""The two places: the library at the package root, the paper's kit in ``manifold_mixup.paper``.
The kit imports the library; the library never imports the kit."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import manifold_mixup as mm

SRC = Path(mm.__file__).parent
LIBRARY = ("manifold", "mixing", "policies", "confidence", "checkpointing", "train", "checks")


def _last_line(code: str) -> str:
    """The last line ``code`` prints in a fresh interpreter (which must exit 0)."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


def test_library_modules_import_nothing_from_the_kit():
    for name in LIBRARY:
        tree = ast.parse((SRC / f"{name}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                target = ("." * node.level) + (node.module or "")
                assert "paper" not in target and not (node.level == 1 and node.module is None), (name, target)
                if node.level == 1:
                    assert node.module in LIBRARY, f"{name}.py imports .{node.module}, which is not a library module"
            elif isinstance(node, ast.Import):
                assert not any(a.name.startswith("manifold_mixup.paper") for a in node.names), name


def test_using_the_library_loads_no_kit_module():
    code = ("import sys, manifold_mixup as mm, torch\n"
            "m = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3))\n"
            "mixer = mm.ManifoldMixup(m, ['1'], alpha=mm.RampUp(), generator=0)\n"
            "logits, t = mixer(torch.randn(4, 2), torch.tensor([0, 1, 2, 0]))\n"
            "mm.train_classifier\n"
            "print(sorted(k for k in sys.modules if k.startswith('manifold_mixup.paper')))\n")
    assert _last_line(code) == "[]"


def test_the_kit_is_reachable_by_its_paths_and_by_the_short_names():
    from manifold_mixup.paper import toy

    assert mm.toy is toy and mm.studies.__name__ == "manifold_mixup.paper.studies"


def test_the_command_line_help_and_the_study_registry_import_no_torch():
    """``--help`` is built from the study registry and the constants the configs check against,
    none of which imports torch (nor matplotlib or scipy): the work's imports come with the work."""
    code = ("import sys\n"
            "from manifold_mixup.paper import cli\n"
            "from manifold_mixup.paper.studies import studies\n"
            "for argv in (['--help'], ['depth-study', '--help'], ['confmix-study', '--help'], ['spiral-figure', '--help']):\n"
            "    try:\n"
            "        cli.main(argv)\n"
            "    except SystemExit as e:\n"
            "        assert e.code == 0, (argv, e.code)\n"
            "print(sorted(studies()), sorted(m for m in ('torch', 'matplotlib', 'scipy') if m in sys.modules))\n")
    assert _last_line(code) == "['confmix-study', 'depth-study', 'spiral-figure'] []"
