"""The overhead benchmark: its JSON, its argument checks, and its hand-written twins (which must
compute what the library computes for the same plan, or the paired ratio compares different work)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

import manifold_mixup as mm

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "mixing_overhead.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("mixing_overhead", BENCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up while being made
    try:
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.modules.pop(spec.name, None)


def run(bench, capsys, *argv):
    with torch.random.fork_rng(devices=[]):  # main seeds the global generator (dropout)
        rc = bench.main(["--keep-denormals", *argv])
    out = capsys.readouterr().out
    assert rc == 0, out
    return [json.loads(line) for line in out.splitlines()]


def positive_finite(v):
    return isinstance(v, float) and math.isfinite(v) and v > 0


def test_json_of_a_tiny_run_has_the_paired_ratios(bench, capsys):
    rows = run(bench, capsys, "--models", "paper-mlp", "--seconds", "0", "--min-rounds", "3", "--warmup", "1",
               "--reference")
    by = {r["method"]: r for r in rows}
    assert set(by) == {"manifold", "input", "confmix-fresh", "confmix-cached",
                       "reference-manifold", "reference-input", "reference-confmix-cached"}
    for r in rows:
        assert r["model"] == "paper-mlp" and r["rounds"] == 3 and r["batch"] == 50
        assert positive_finite(r["ratio_to_erm"]) and positive_finite(r["paired_ratio_median"])
        q1, q3 = r["paired_ratio_iqr"]
        assert q1 <= r["paired_ratio_median"] <= q3
        assert r["step_ms"] > 0 and r["erm_step_ms"] > 0
    for m in ("manifold", "input", "confmix-cached"):
        r = by[m]
        assert r["reference"] == f"reference-{m}"
        assert positive_finite(r["paired_ratio_to_reference_median"])
        q1, q3 = r["paired_ratio_to_reference_iqr"]
        assert 0 < q1 <= r["paired_ratio_to_reference_median"] <= q3
    assert "paired_ratio_to_reference_median" not in by["confmix-fresh"]  # no twin
    assert "paired_ratio_to_reference_median" not in by["reference-manifold"]


def test_bad_arguments_name_the_flag_and_what_is_allowed(bench, capsys):
    with pytest.raises(SystemExit):
        bench.main(["--models", "paper-mlp", "vit"])
    err = capsys.readouterr().err
    assert "--models" in err and "'vit'" in err and "small-resnet" in err
    with pytest.raises(SystemExit):
        bench.main(["--seconds", "-1"])
    assert "--seconds" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.main(["--models", "paper-cnn-compiled", "--compile-backend", "indcutor"])
    err = capsys.readouterr().err
    assert "--compile-backend" in err and "'indcutor'" in err and "aot_eager" in err


def same_plan(bench, twin_fn, model, x, y, layers, k, kwargs=None, **mixer_kw):
    """The twin's logits against the library's for one given plan at each layer (train mode; the
    global generator re-seeded before each forward, so dropout draws the same masks)."""
    kwargs = kwargs or {}
    b = len(y)
    g = torch.Generator().manual_seed(5)
    perm, lam = torch.randperm(b, generator=g), torch.rand(b, generator=g)
    twin = twin_fn(model, x, kwargs, layers)
    mixer = mm.ManifoldMixup(model, layers, alpha=0.5, num_classes=k, generator=0, **mixer_kw)
    model.train()
    for layer in layers:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(3)
            mine = twin.forward(perm, lam, layer)
            torch.manual_seed(3)
            lib, targets = mixer(x, y, plan=mm.MixPlan(perm, lam), layer=layer, **kwargs)
        torch.testing.assert_close(mine, lib, rtol=1e-5, atol=1e-5)
        onehot = torch.eye(k)[y]
        torch.testing.assert_close(targets, bench.hand_mix(onehot, perm, lam))
        # and mixing changed something, so the comparison is not of two plain forwards
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(3)
            plain = bench.logits_of(model(x, **kwargs))
        assert (plain - mine).abs().max() > 1e-4


def test_sequential_twin_computes_the_library_mix(bench):
    g = torch.Generator().manual_seed(0)
    model = mm.models.mlp(3, hidden=(16, 16, 16), generator=g)
    x, y = torch.randn(8, 2, generator=g), torch.randint(0, 3, (8,), generator=g)
    same_plan(bench, bench.sequential_twin, model, x, y, ["input", "relu1", "relu2", "relu3"], 3)
    cnn = mm.models.paper_cnn((1, 8, 8), 4, generator=g)
    x, y = torch.randn(8, 1, 8, 8, generator=g), torch.randint(0, 4, (8,), generator=g)
    same_plan(bench, bench.sequential_twin, cnn, x, y, ["input", mm.models.PAPER_CNN_MIX_LAYER], 4)


def test_compiled_twin_computes_the_library_mix(bench):
    g = torch.Generator().manual_seed(3)
    cnn = mm.models.paper_cnn((1, 8, 8), 4, generator=g)
    x, y = torch.randn(8, 1, 8, 8, generator=g), torch.randint(0, 4, (8,), generator=g)
    same_plan(bench, bench.compiled_twin("aot_eager"), cnn, x, y, [mm.models.PAPER_CNN_MIX_LAYER], 4)


def test_resnet_twin_computes_the_library_mix(bench):
    g = torch.Generator().manual_seed(1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = mm.models.small_resnet((3, 8, 8), 5, width=4)
    x, y = torch.randn(6, 3, 8, 8, generator=g), torch.randint(0, 5, (6,), generator=g)
    same_plan(bench, bench.resnet_twin, model, x, y, ["input", "stem", "block1", "block2", "pool"], 5)


def test_hook_twin_computes_the_library_mix_on_bert(bench):
    pytest.importorskip("transformers")
    from transformers import BertForSequenceClassification

    cfg = bench.bert_config(vocab_size=50, hidden_size=16, intermediate_size=32, max_position_embeddings=16,
                            num_labels=3)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = BertForSequenceClassification(cfg)
    g = torch.Generator().manual_seed(2)
    ids, mask = bench.padded_tokens(6, 12, cfg.vocab_size, g)
    y = torch.randint(0, 3, (6,), generator=g)
    kwargs = {"attention_mask": mask}
    select = bench.block_select(model, bench.BERT_BLOCK, ids, kwargs)
    same_plan(bench, bench.hook_twin, model, ids, y, [bench.BERT_BLOCK], 3, kwargs, select=select)


@pytest.mark.slow
def test_compiled_case_runs_without_recompiling_while_timed(bench, capsys):
    rows = run(bench, capsys, "--models", "paper-cnn-compiled", "--compile-backend", "aot_eager",
               "--seconds", "0", "--min-rounds", "2", "--warmup", "2", "--reference")
    by = {r["method"]: r for r in rows}
    assert set(by) == {"manifold", "erm-eager", "reference-manifold"}
    assert positive_finite(by["manifold"]["paired_ratio_to_reference_median"])
    assert by["manifold"]["compile_backend"] == "aot_eager"
    assert by["manifold"]["graphs_compiled_while_timed"] == 0
    for r in rows:
        assert positive_finite(r["ratio_to_erm"])


@pytest.mark.slow
def test_bert_case_runs_with_its_twin(bench, capsys):
    pytest.importorskip("transformers")
    rows = run(bench, capsys, "--models", "bert", "--seconds", "0", "--min-rounds", "2", "--warmup", "1",
               "--reference")
    by = {r["method"]: r for r in rows}
    assert set(by) == {"manifold", "reference-manifold"}
    assert by["manifold"]["batch"] == 32 and by["manifold"]["input_shape"] == [128]
    assert positive_finite(by["manifold"]["paired_ratio_to_reference_median"])
    for r in rows:
        assert positive_finite(r["ratio_to_erm"])


@pytest.mark.slow
def test_checkpointed_bert_case_runs(bench, capsys):
    pytest.importorskip("transformers")
    rows = run(bench, capsys, "--models", "bert-checkpointed", "--seconds", "0", "--min-rounds", "1", "--warmup", "1")
    (row,) = rows
    assert row["method"] == "manifold" and row["gradient_checkpointing"] is True
    assert row["mixed_at"] == bench.BERT_CKPT_LAYER and positive_finite(row["ratio_to_erm"])
