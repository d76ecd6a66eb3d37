import csv
import json

import pytest

from manifold_mixup.paper.cli import main
from manifold_mixup.paper.studies.confmix import ConfMixStudyConfig, run_confmix_study
from manifold_mixup.paper.studies.depth import DepthStudyConfig, PRESETS, run_depth_study

TINY = DepthStudyConfig(problems_per_k=2, ks=(2, 3), hidden=(16, 16, 16), n_train=100, epochs=2, batch_size=20,
                        grid_resolution=32, mmlb_samples=2000, problems_per_shard=1)


def _csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_tiny_depth_study_outputs_and_resume(tmp_path):
    res = run_depth_study(TINY, tmp_path / "a", progress=False)
    rows = _csv(tmp_path / "a" / "results.csv")
    assert len(rows) == 4 * 5 and {r["method"] for r in rows} == {"baseline", "k0", "k1", "k2", "k3"}
    for r in rows:
        assert float(r["excess_risk_pp"]) >= 0
        assert abs(float(r["risk"]) - float(r["bayes_risk"]) - float(r["excess_risk_pp"]) / 100) < 1e-9
        assert 0 <= float(r["normalised_mmlb"]) <= 1
    summary = (tmp_path / "a" / "summary.md").read_text()
    assert "Table 1" in summary and "Wilcoxon" in summary and "18.1" in summary
    for f in ("figure2.png", "figure3.png", "manifest.json"):
        assert (tmp_path / "a" / f).stat().st_size > 0
    # interrupted run: drop two shards, rerun, same results.csv
    first = (tmp_path / "a" / "results.csv").read_text()
    shards = sorted((tmp_path / "a" / "shards").glob("*.json"))
    for s in shards[1:3]:
        s.unlink()
    run_depth_study(TINY, tmp_path / "a", progress=False)
    assert (tmp_path / "a" / "results.csv").read_text() == first
    assert res["table1"]["baseline"]["excess_pp"] == pytest.approx(
        sum(float(r["excess_risk_pp"]) for r in rows if r["method"] == "baseline") / 4)


def test_depth_study_refuses_other_settings_and_bad_input(tmp_path, capsys):
    run_depth_study(TINY, tmp_path, progress=False)
    code = main(["depth-study", "--preset", "quick", "--out", str(tmp_path), "--no-progress"])
    assert code == 2 and "other settings" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"unknown methods \['k9'\]"):
        DepthStudyConfig(methods=("baseline", "k9"))
    with pytest.raises(ValueError, match=r"ks must be one or more integers in \[2, "):
        DepthStudyConfig(ks=(1, 2))
    with pytest.raises(ValueError, match=r"grid_resolution must be an integer in \[32, 4096\]; got 16"):
        DepthStudyConfig(grid_resolution=16)  # coarser grids misstate the risks by over 1 pp (GRID_MIN)
    code = main(["depth-study", "--out", str(tmp_path / "b"), "--methods", "baseline", "k7"])
    assert code == 2 and "unknown method" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


@pytest.mark.slow
def test_ray_executor_gives_the_in_process_result(tmp_path):
    pytest.importorskip("ray")
    cfg = DepthStudyConfig(problems_per_k=1, ks=(2,), hidden=(8, 8, 8), n_train=40, epochs=1, batch_size=20,
                           grid_resolution=32, mmlb_samples=1000, problems_per_shard=1, methods=("baseline", "k1"))
    run_depth_study(cfg, tmp_path / "local", progress=False)
    run_depth_study(cfg, tmp_path / "ray", executor="ray", progress=False)
    assert (tmp_path / "local" / "results.csv").read_text() == (tmp_path / "ray" / "results.csv").read_text()


def test_quick_preset_is_the_paper_setting_scaled_down():
    paper, quick = PRESETS["paper"], PRESETS["quick"]
    assert (paper.problems_per_k, paper.ks, paper.hidden, paper.epochs, paper.batch_size, paper.alpha, paper.n_train) == (
        100, (2, 3, 4, 5), (512, 512, 512), 20, 50, 0.5, 1000)
    assert quick.methods == paper.methods and quick.epochs == paper.epochs


def test_tiny_confmix_study(tmp_path, capsys):
    methods = ("erm", "input-confmix", "manifold-ramp-up")
    code = main(["confmix-study", "--dataset", "digits", "--seeds", "2", "--epochs", "2", "--warmup-epochs", "1",
                 "--batch-size", "128", "--out", str(tmp_path), "--no-progress", "--methods", *methods])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    rows = _csv(tmp_path / "results.csv")
    assert len(rows) == 6 and all(0 <= float(r["test_acc"]) <= 1 for r in rows)
    summary = (tmp_path / "summary.md").read_text()
    assert "Input ConfMix" in summary and "+3.4" in summary
    assert (tmp_path / "alpha.png").stat().st_size > 0
    assert set(out["result"]) == {"input-confmix", "manifold-ramp-up"}


def test_confmix_study_bad_input(tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown method"):
        ConfMixStudyConfig(methods=("erm", "input-magic"))
    assert main(["confmix-study", "--dataset", "cifar10", "--data-dir", str(tmp_path / "none"), "--out",
                 str(tmp_path / "o"), "--seeds", "1", "--epochs", "1", "--no-progress"]) == 2
    assert "cifar" in capsys.readouterr().err.lower()


def test_figure_commands_write_pngs(tmp_path, capsys):
    assert main(["spiral-figure", "--out", str(tmp_path / "s"), "--epochs", "1"]) == 0
    acc = json.loads(capsys.readouterr().out)["result"]
    assert set(acc) == {"ERM", "input mixup (k = 0)", "manifold mixup, k = 1", "manifold mixup, k = 2", "manifold mixup, k = 3"}
    assert (tmp_path / "s" / "spiral.png").read_bytes()[:4] == b"\x89PNG"
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["derived"]["train_accuracy"] == acc and manifest["settings"]["epochs"] == 1 and manifest["machines"][0]["cpu"]
    assert main(["figure2", "--out", str(tmp_path / "f2.png")]) == 0
    assert (tmp_path / "f2.png").read_bytes()[:4] == b"\x89PNG"


def test_confmix_summary_with_one_seed_and_confmix_still_in_warm_up(tmp_path):
    from manifold_mixup.paper.studies.confmix import summarise

    cfg = ConfMixStudyConfig(methods=("erm", "input-confmix"), seeds=1, epochs=1)  # warm-up 5 epochs
    with pytest.warns(UserWarning, match="never leave their warm-up"):
        run_confmix_study(cfg, tmp_path, progress=False)
    text = (tmp_path / "summary.md").read_text()
    assert "(1 seed, 1 epochs" in text and "no interval from one seed" in text and "nan" not in text
    assert "ConfMix never left its warm-up (1 epochs <= warmup_epochs = 5)" in text
    rows = [{"method": m, "seed": s, "test_acc": 0.5 + 0.01 * s} for m in ("erm", "input-confmix") for s in range(2)]
    text, _ = summarise(ConfMixStudyConfig(methods=("erm", "input-confmix"), seeds=2, epochs=6), rows)
    assert "(2 seeds," in text and "95% interval" in text and "warm-up" not in text


def test_help_shows_each_flags_meaning_and_the_configs_default(capsys):
    from manifold_mixup.paper.studies.confmix import ConfMixStudyConfig

    for command in ("depth-study", "confmix-study", "spiral-figure"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        if command == "depth-study":
            shown = ", ".join(f"{name}: {cfg.problems_per_k}" for name, cfg in PRESETS.items())
            assert f"toy problems per number of classes K (default: {shown})" in text
            assert "quick: 128 128 128" in text and "paper: 512 512 512" in text
        if command == "confmix-study":
            assert f"(default: {ConfMixStudyConfig().batch_size})" in text and "--train-fraction" in text
        assert text.count("(default:") >= 8


def test_flags_replace_only_the_config_fields_they_name(tmp_path, study_settings):
    from manifold_mixup.paper.studies.confmix import ConfMixStudyConfig

    seen = study_settings
    assert main(["confmix-study", "--out", str(tmp_path), "--epochs", "3", "--methods", "erm", "input-mixup"]) == 130
    assert seen["settings"] == ConfMixStudyConfig(epochs=3, methods=("erm", "input-mixup")).settings()


def test_confmix_study_on_a_fraction_of_the_training_images(tmp_path, capsys):
    code = main(["confmix-study", "--seeds", "1", "--epochs", "1", "--methods", "erm", "--train-fraction", "0.1",
                 "--out", str(tmp_path), "--no-progress"])
    assert code == 0
    # 1347 digits training images -> 135; batch min(250, 135 // 5) = 27: 5 steps an epoch
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["derived"] == {"n_train": 135, "batch_size_used": 27, "steps_per_epoch": 5}
    assert manifest["settings"]["train_fraction"] == 0.1
    summary = (tmp_path / "summary.md").read_text()
    assert "Training on 135 images" in summary and "batch 27 = min(250, 135 // 5)" in summary
    assert main(["confmix-study", "--train-fraction", "0", "--out", str(tmp_path / "x")]) == 2
    assert "--train-fraction must" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_cli_errors_are_one_line_without_abbreviations_and_it_has_a_version(tmp_path, capsys):
    for command in ("depth-study", "confmix-study", "spiral-figure"):
        with pytest.raises(SystemExit) as e:
            main([command, "--epoch", "5", "--out", str(tmp_path / command)])  # --epochs, mistyped
        assert e.value.code == 2 and "unrecognized arguments: --epoch 5" in capsys.readouterr().err
        assert not (tmp_path / command).exists()
    with pytest.raises(SystemExit) as e:
        main(["depth-study", "--optimizer", "adamw", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "invalid choice: 'adamw'" in err and "'sgd'" in err
    with pytest.raises(SystemExit) as e:
        main(["depth-study"])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "required: --out" in err
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    from manifold_mixup import __version__
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"manifold-mixup {__version__}"


# ---------------------------------------------------------------- the study registry
NEW_STUDY = '''
from dataclasses import dataclass
from pathlib import Path

from manifold_mixup.checks import check_int
from manifold_mixup.paper.studies.protocol import Flag, Study


@dataclass(frozen=True)
class CountConfig:
    n: int = 3

    def __post_init__(self):
        check_int("n", self.n, 1, 100)


def run(cfg, out, progress=True, repeat=1):
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "count.txt").write_text(" ".join(map(str, range(cfg.n))) * repeat)
    return {"n": cfg.n, "repeat": repeat}


STUDY = Study(name="count-study", help="count to n", description="Writes 0 .. n-1 into count.txt.",
              presets={"small": CountConfig(), "large": CountConfig(n=50)}, default_preset="large",
              flags=(Flag("n", int, "N", "how far"),), options=(Flag("repeat", int, "R", "repeats"),),
              run=run, brief=lambda res: res)
'''


def test_a_new_study_needs_one_registration_to_appear_in_the_cli(tmp_path, monkeypatch, capsys):
    """A module in the studies package that defines STUDY becomes a subcommand: its presets, its
    flags with the config's defaults, its options with run()'s defaults, its checks."""
    import sys

    import manifold_mixup.paper.studies as studies_pkg

    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "count_study.py").write_text(NEW_STUDY)
    monkeypatch.setattr(studies_pkg, "__path__", [*studies_pkg.__path__, str(tmp_path / "pkg")])
    monkeypatch.delitem(sys.modules, "manifold_mixup.paper.studies.count_study", raising=False)
    assert "count-study" in studies_pkg.studies()
    with pytest.raises(SystemExit):
        main(["count-study", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "Writes 0 .. n-1 into count.txt." in text and "how far (default: small: 3, large: 50)" in text
    assert "repeats (default: 1)" in text and "{small,large}" in text
    assert main(["count-study", "--out", str(tmp_path / "o"), "--n", "4", "--repeat", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["result"] == {"n": 4, "repeat": 2}
    assert (tmp_path / "o" / "count.txt").read_text() == "0 1 2 30 1 2 3"
    assert main(["count-study", "--out", str(tmp_path / "p")]) == 0  # the default preset is 'large'
    assert json.loads(capsys.readouterr().out)["result"]["n"] == 50
    assert main(["count-study", "--out", str(tmp_path / "q"), "--n", "0"]) == 2
    assert capsys.readouterr().err.strip() == "manifold-mixup count-study: error: --n must be an integer in [1, 100]; got 0"
    monkeypatch.delitem(sys.modules, "manifold_mixup.paper.studies.count_study", raising=False)


def test_every_registered_study_has_its_worker_check_and_summary_where_it_shards():
    from manifold_mixup.paper.studies import studies

    found = studies()
    assert sorted(found) == ["confmix-study", "depth-study", "spiral-figure"]
    for s in found.values():
        for name, cfg in s.presets.items():
            assert type(cfg) is type(next(iter(s.presets.values()))), (s.name, name)
            for f in s.flags:
                assert hasattr(cfg, f.field), (s.name, f.field)
        if s.sharded:
            assert callable(s.worker) and callable(s.check) and callable(s.summarise)
            assert len(s.shards(s.presets[s.default])) >= 1


# ---------------------------------------------------------------- the depth study's alpha schedule
def test_a_depth_study_on_a_ramp_and_the_constant_fingerprint_unchanged(tmp_path):
    """schedule='constant' leaves the settings (the fingerprint of committed studies) as they were;
    a ramp records its schedule and half-life, trains differently and says so in the summary."""
    assert "schedule" not in TINY.settings() and "half_life" not in TINY.settings()
    from dataclasses import replace

    ramp = replace(TINY, schedule="ramp-up", half_life=1.0, ks=(2,), problems_per_k=1, epochs=6, lr=1e-2)
    assert ramp.settings()["schedule"] == "ramp-up" and ramp.settings()["half_life"] == 1.0
    assert "alpha" not in ramp.settings() and replace(ramp, alpha=3.0).settings() == ramp.settings()  # unused
    const = replace(ramp, schedule="constant")
    r1 = run_depth_study(ramp, tmp_path / "ramp", progress=False)
    r0 = run_depth_study(const, tmp_path / "const", progress=False)
    base = lambda res, m: [r["risk"] for r in res["rows"] if r["method"] == m]  # noqa: E731
    assert base(r1, "baseline") == base(r0, "baseline")  # ERM does not mix: the schedule cannot move it
    assert [base(r1, m) for m in ("k0", "k1", "k2", "k3")] != [base(r0, m) for m in ("k0", "k1", "k2", "k3")]
    assert "alpha 0 -> 1 (ramp-up, half-life 1 epochs)" in (tmp_path / "ramp" / "summary.md").read_text()
    with pytest.raises(ValueError, match=r"schedule must be one of \['constant', 'ramp-up', 'ramp-down'\]; got 'cosine'"):
        replace(TINY, schedule="cosine")


BROKEN = {
    "fails_to_import": ("import not_a_module_anywhere\n", r"manifold_mixup\.paper\.studies\.zz_bad cannot be imported "
                        r"\(ModuleNotFoundError: No module named 'not_a_module_anywhere'\)"),
    "same_name": (NEW_STUDY.replace('name="count-study"', 'name="depth-study"'),
                  r"zz_bad registers a study named 'depth-study', as manifold_mixup\.paper\.studies\.depth does"),
    "reserved_name": (NEW_STUDY.replace('name="count-study"', 'name="figure2"'), r"a registered study is named 'figure2'"),
    "flag_without_field": (NEW_STUDY.replace('Flag("n", int', 'Flag("m", int'),
                           r"zz_bad: flag --m sets 'm', which is not a field of the 'small' preset's CountConfig"),
    "option_without_keyword": (NEW_STUDY.replace('options=(Flag("repeat"', 'options=(Flag("times"'),
                               r"zz_bad: option --times is not a keyword of run\(\)"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_study_that_cannot_be_registered_is_one_line_naming_its_module(case, tmp_path, monkeypatch, capsys):
    import re
    import sys

    import manifold_mixup.paper.studies as studies_pkg

    source, message = BROKEN[case]
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "zz_bad.py").write_text(source)
    monkeypatch.setattr(studies_pkg, "__path__", [*studies_pkg.__path__, str(tmp_path / "pkg")])
    monkeypatch.delitem(sys.modules, "manifold_mixup.paper.studies.zz_bad", raising=False)
    assert main(["--help"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("manifold-mixup: error: ") and re.search(message, err), err
    monkeypatch.delitem(sys.modules, "manifold_mixup.paper.studies.zz_bad", raising=False)


def test_an_unknown_flag_is_named_by_its_subcommand(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["depth-study", "--out", str(tmp_path / "o"), "--epoch", "5"])
    assert e.value.code == 2
    assert capsys.readouterr().err == ("manifold-mixup depth-study: error: unrecognized arguments: --epoch 5 "
                                       "(see manifold-mixup depth-study --help)\n")
    assert not (tmp_path / "o").exists()


def test_a_refused_rerun_names_only_the_settings_that_differ(tmp_path, capsys):
    args = ["spiral-figure", "--out", str(tmp_path / "s"), "--n", "20", "--epochs", "1", "--hidden", "8",
            "--batch-size", "10", "--resolution", "8"]
    assert main(args) == 0
    capsys.readouterr()
    assert main(args + ["--lr", "0.01"]) == 2
    assert "(differing: ['lr'])" in capsys.readouterr().err
