"""Each script in examples/ runs end to end, a few steps, in a fresh interpreter."""

from __future__ import annotations

import ast
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str, *args: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True,
                          timeout=180, env=env, cwd=EXAMPLES.parent)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return ast.literal_eval(proc.stdout.strip().splitlines()[-1])  # each script prints its result last


def test_plain_pytorch_loop():
    result = run_example("plain_pytorch.py", "--steps", "3", "--batch-size", "16")
    assert result["steps"] == 3
    assert 0.0 <= result["test_accuracy"] <= 1.0 and result["last_loss"] > 0


@pytest.mark.slow
def test_hugging_face_trainer_with_compute_loss_override():
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")  # the Trainer needs it
    result = run_example("hf_trainer.py", "--steps", "3", "--batch-size", "8")
    assert result["steps"] == 3
    assert result["train_loss"] > 0 and result["eval_loss"] > 0


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("lightning") is None, reason="the optional extra 'lightning' is not installed")
def test_lightning_training_step():
    result = run_example("lightning_module.py", "--steps", "3", "--batch-size", "16")
    assert result["steps"] == 3
    assert 0.0 <= result["test_accuracy"] <= 1.0

