"""The depth study over training time: evaluation at listed epochs, its exactness, its summary."""

import csv
import json
from dataclasses import replace

import numpy as np
import pytest

from manifold_mixup.paper.cli import main
from manifold_mixup.paper.studies.depth import PRESETS, DepthStudyConfig, run_depth_study, summarise

TINY = ["--problems-per-k", "2", "--ks", "2", "3", "--hidden", "16", "16", "16", "--n-train", "100",
        "--batch-size", "20", "--grid-resolution", "32", "--mmlb-samples", "2000", "--problems-per-shard", "1",
        "--no-progress"]


def _rows(folder):
    with open(folder / "results.csv") as f:
        return list(csv.DictReader(f))


def test_rows_at_epoch_e_equal_a_run_of_e_epochs(tmp_path, capsys):
    assert main(["depth-study", "--out", str(tmp_path / "all"), "--epochs", "4", "--eval-epochs", "3", "1", *TINY]) == 0
    rows = _rows(tmp_path / "all")
    assert [r["epoch"] for r in rows[:15]] == ["1"] * 5 + ["3"] * 5 + ["4"] * 5  # problem, epoch, method
    assert len(rows) == 4 * 3 * 5
    for e in (1, 3, 4):
        assert main(["depth-study", "--out", str(tmp_path / f"e{e}"), "--epochs", str(e), *TINY]) == 0
        alone = _rows(tmp_path / f"e{e}")
        assert {r["epoch"] for r in alone} == {str(e)}
        assert [r for r in rows if r["epoch"] == str(e)] == alone  # every column, as written
    # training went on: the models of epoch 1 and epoch 4 differ
    risk = {e: [float(r["risk"]) for r in rows if r["epoch"] == e] for e in ("1", "4")}
    assert risk["1"] != risk["4"]
    manifest = json.loads((tmp_path / "all" / "manifest.json").read_text())
    assert manifest["settings"]["eval_epochs"] == [3, 1]
    assert manifest["settings"]["optimizer_definition"].startswith("torch.optim.Adam(")
    capsys.readouterr()


def test_summary_over_epochs_agrees_with_the_rows(tmp_path):
    cfg = DepthStudyConfig(problems_per_k=2, ks=(2, 3), hidden=(16, 16, 16), n_train=100, epochs=3, eval_epochs=(1,),
                           batch_size=20, grid_resolution=32, mmlb_samples=2000, problems_per_shard=2)
    res = run_depth_study(cfg, tmp_path, progress=False)
    rows = _rows(tmp_path)
    assert res["epochs"] == [1, 3] and list(res["table1_by_epoch"]) == [1, 3]
    for e in (1, 3):
        at = [r for r in rows if r["epoch"] == str(e)]
        mean = {m: np.mean([float(r["excess_risk_pp"]) for r in at if r["method"] == m]) for m in cfg.methods}
        for m in cfg.methods:
            assert res["table1_by_epoch"][e][m]["excess_pp"] == pytest.approx(mean[m], abs=1e-12)
        k3 = next(p for p in res["difference_over_epochs"]["Mixup 3"] if p[0] == e)
        assert k3[1] == pytest.approx(mean["k3"] - mean["baseline"], abs=1e-12) and k3[2] <= k3[1] <= k3[3]
    # Table 1 and Figure 3 are those of the last epoch
    assert res["table1"]["k1"]["excess_pp"] == res["table1_by_epoch"][3]["k1"]["excess_pp"]
    last = [dict(r, epoch=int(r["epoch"])) for r in res["rows"] if r["epoch"] == 3]
    assert summarise(replace(cfg, eval_epochs=()), last)[1]["figure3"] == res["figure3"]
    text = (tmp_path / "summary.md").read_text()
    assert "Over training" in text and "| 1 | Mixup 2 |" in text and "| 3 | Baseline |" in text
    assert "by normalised-MMLB quartile" in text
    assert (tmp_path / "figure_epochs.png").read_bytes()[:4] == b"\x89PNG"


def _synthetic_rows(shift_by_epoch):
    """40 problems, baseline excess 1 pp; k1 = baseline + shift(epoch) + 0.5 pp * MMLB quartile index (0..3)
    +- 0.01 pp (alternating, mean 0 in every quartile)."""
    rows = []
    for p in range(40):
        q = p // 10
        for e, shift in shift_by_epoch.items():
            for m in ("baseline", "k1"):
                exc = 1.0 + (shift + 0.5 * q + 0.01 * (2 * (p % 2) - 1) if m == "k1" else 0.0)
                rows.append({"K": 2, "problem": p, "method": m, "epoch": e, "bayes_risk": 0.05 + 0.001 * p,
                             "normalised_mmlb": 0.1 + 0.01 * p, "normalised_mmlb_stderr": 0.001,
                             "excess_risk_pp": exc, "excess_risk_rel_pct": 10 * exc})
    return rows


def test_summary_finds_where_the_interval_first_excludes_zero_and_the_quartile_trend():
    cfg = DepthStudyConfig(problems_per_k=40, ks=(2,), hidden=(8,), methods=("baseline", "k1"), epochs=30,
                           eval_epochs=(10, 20))
    # k1 minus baseline: 0.5 q at 10 epochs (all >= -0.01: worse), -0.76 + 0.5 q at 20 (mean -0.01, spread
    # over +-0.75: the interval holds 0), -2.5 + 0.5 q at 30 (all < 0: better)
    text, num = summarise(cfg, _synthetic_rows({10: 0.0, 20: -0.76, 30: -2.5}))
    means = [p[1] for p in num["difference_over_epochs"]["Mixup 1"]]
    assert means == pytest.approx([0.75, -0.01, -1.75], abs=1e-9)
    sign = num["excludes_zero"]["k1"]
    assert sign["first_epoch"] == 10 and sign["direction"] == "loss"
    assert sign["loss_epochs"] == [10] and sign["gain_epochs"] == [30]
    assert "Mixup 1: first at epoch 10 (higher excess risk than the baseline)" in text
    # quartile trend: the difference grows by 0.5 pp per quartile at every epoch
    for e, shift in ((10, 0.0), (30, -2.5)):
        q = [p[1] for p in num["quartile_trend"]["Mixup 1"][e]]
        assert q == pytest.approx([shift + 0.5 * i for i in range(4)], abs=1e-9)


def test_eval_epochs_settings_and_the_long_preset(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"eval_epochs must be integers in 1..epochs = 20; got \[10, 40\]"):
        DepthStudyConfig(eval_epochs=(10, 40))
    with pytest.raises(ValueError, match="eval_epochs"):
        DepthStudyConfig(eval_epochs=(5, 5))
    assert DepthStudyConfig(epochs=30, eval_epochs=(20, 10)).evaluated_epochs == (10, 20, 30)
    long, quick = PRESETS["long"], PRESETS["quick"]
    assert replace(long, epochs=quick.epochs, eval_epochs=()) == quick
    assert long.epochs == 200 and long.evaluated_epochs == (10, 20, 40, 100, 200)
    # the long preset's evaluation epochs do not fit a shorter run: one clear line, nothing written
    assert main(["depth-study", "--preset", "long", "--epochs", "20", "--out", str(tmp_path / "x"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--eval-epochs must be integers in 1..epochs = 20" in err and err.count("\n") == 1
    assert not (tmp_path / "x").exists()


def test_depth_study_rows_do_not_depend_on_the_thread_count(tmp_path):
    # the CLI fits torch's threads to the load before each shard (MANIFOLD_MIXUP_THREADS=auto);
    # that is only allowed because the depth study's numbers are the same with 1 and 2 threads
    import csv

    import torch

    from manifold_mixup.paper.studies.depth import preset, run_depth_study

    old = torch.get_num_threads()
    rows = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            cfg = preset("quick", ks=(3,), problems_per_k=2, problems_per_shard=2, epochs=2, hidden=(64, 64, 64),
                         grid_resolution=32, mmlb_samples=2000)
            run_depth_study(cfg, tmp_path / f"t{n}", progress=False)
            rows.append(list(csv.DictReader(open(tmp_path / f"t{n}" / "results.csv"))))
    finally:
        torch.set_num_threads(old)
    assert rows[0] == rows[1]


def test_the_figure_over_training_needs_two_evaluated_epochs(tmp_path):
    from manifold_mixup.paper.studies.depth import PRESETS, run_depth_study
    from dataclasses import replace

    cfg = replace(PRESETS["quick"], problems_per_k=1, ks=(2,), hidden=(8,), methods=("baseline", "k1"), epochs=2, n_train=100, batch_size=50,
                  grid_resolution=32, mmlb_samples=400, problems_per_shard=1)
    run_depth_study(cfg, tmp_path / "one", progress=False)
    assert (tmp_path / "one" / "summary.md").exists() and not (tmp_path / "one" / "figure_epochs.png").exists()
    run_depth_study(replace(cfg, eval_epochs=(1,)), tmp_path / "two", progress=False)
    assert (tmp_path / "two" / "figure_epochs.png").exists()
