"""Fashion-MNIST: the strict idx reader on small files written here (good, truncated, oversized,
foreign, altered, missing), the real files when the Debian package is installed, the Table 2
study's presets and its concurrent shards, and ConfMix's confidences on 1x28x28 images."""

from __future__ import annotations

import gzip
import hashlib
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

import manifold_mixup as mm
from manifold_mixup.paper.cli import main
from manifold_mixup.paper.data import load_dataset
from manifold_mixup.paper.fashion_mnist import DEFAULT_DIR, FILES, load_fashion_mnist, read_fashion_mnist
from manifold_mixup.paper.studies.confmix import METHODS, PRESETS, ConfMixStudyConfig, run_confmix_study

N_TRAIN, N_TEST = 30, 12


def idx_bytes(arr: np.ndarray, type_byte: int = 0x08) -> bytes:
    """An idx file written by hand: 0, 0, element type, ndim, big-endian dims, then the bytes."""
    return bytes([0, 0, type_byte, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.astype(np.uint8).tobytes()


def arrays(seed: int = 0) -> dict[str, np.ndarray]:
    """Small stand-ins for the four files: every class present in the training labels."""
    rng = np.random.default_rng(seed)
    return {
        FILES[0]: rng.integers(0, 256, (N_TRAIN, 28, 28), dtype=np.uint8),
        FILES[1]: (np.arange(N_TRAIN) % 10).astype(np.uint8),
        FILES[2]: rng.integers(0, 256, (N_TEST, 28, 28), dtype=np.uint8),
        FILES[3]: rng.integers(0, 10, N_TEST, dtype=np.uint8),
    }


def write(folder: Path, content: dict[str, bytes], gz: tuple[str, ...] = FILES) -> dict[str, str]:
    """Write the files (gzip for the names in ``gz``, raw for the others); return their SHA-256."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in content.items():
        if name in gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return {name: hashlib.sha256(data).hexdigest() for name, data in content.items()}


def good(folder: Path, gz: tuple[str, ...] = FILES, seed: int = 0) -> tuple[dict, dict]:
    arr = arrays(seed)
    return arr, write(folder, {n: idx_bytes(a) for n, a in arr.items()}, gz)


def test_gzip_and_raw_files_are_read_exactly(tmp_path):
    arr, sums = good(tmp_path, gz=(FILES[0], FILES[3]))  # two compressed, two raw
    x_train, y_train, x_test, y_test = read_fashion_mnist(tmp_path, checksums=sums)
    assert x_train.shape == (N_TRAIN, 1, 28, 28) and x_test.shape == (N_TEST, 1, 28, 28)
    assert np.array_equal(x_train[:, 0], arr[FILES[0]]) and np.array_equal(x_test[:, 0], arr[FILES[2]])
    assert y_train.dtype == np.int64 and np.array_equal(y_train, arr[FILES[1]]) and np.array_equal(y_test, arr[FILES[3]])


def test_normalisation_comes_from_the_training_images_only(tmp_path):
    arr, sums = good(tmp_path / "a")
    data = load_fashion_mnist(tmp_path / "a", checksums=sums)
    raw = arr[FILES[0]].astype(np.float64)
    mean, std = raw.mean(), raw.std()
    assert data.name == "fashion-mnist" and data.num_classes == 10
    assert data.channel_mean == pytest.approx((mean,)) and data.channel_std == pytest.approx((std,))
    expect_test = (arr[FILES[2]].astype(np.float64) - mean) / std
    assert np.allclose(data.x_test[:, 0].numpy(), expect_test, atol=1e-5)
    # other test images, the same training images: the same statistics
    other = dict(arr)
    other[FILES[2]] = np.full((N_TEST, 28, 28), 255, dtype=np.uint8)
    sums_b = write(tmp_path / "b", {n: idx_bytes(a) for n, a in other.items()})
    assert load_fashion_mnist(tmp_path / "b", checksums=sums_b).channel_mean == data.channel_mean


def test_a_training_fraction_is_stratified_and_normalised_by_itself(tmp_path):
    arr, sums = good(tmp_path)
    data = load_fashion_mnist(tmp_path, train_fraction=0.5, seed=3, checksums=sums)
    assert data.x_train.shape[0] == 15 and data.x_test.shape[0] == N_TEST
    assert sorted(torch.bincount(data.y_train, minlength=10).tolist()) == [1] * 5 + [2] * 5  # 3 of each class, halved
    assert abs(float(data.x_train.mean())) < 1e-5 and float(data.x_train.std(unbiased=False)) == pytest.approx(1, abs=1e-4)


def _mutations():
    img = arrays()[FILES[0]]
    head = bytes([0, 0, 8, 3]) + struct.pack(">3I", *img.shape)
    return [
        ("truncated", FILES[0], idx_bytes(img)[:-5], "truncated: 23515 bytes of data where its header declares 23520"),
        ("oversized", FILES[0], idx_bytes(img) + b"\x00", "oversized: more data than the 23520 bytes"),
        ("header cut", FILES[0], head[:9], "truncated in its header"),
        ("wrong type", FILES[0], idx_bytes(img, type_byte=0x0D), "magic number 00000d03, expected 00000803"),
        ("foreign file", FILES[0], b"PK\x03\x04" + bytes(100), "magic number 504b0304"),
        ("empty", FILES[1], b"", "magic number missing"),
        ("labels as images", FILES[1], idx_bytes(img), "with 1 dimension(s) (magic number 00000803, expected 00000801)"),
        ("wrong size", FILES[2], idx_bytes(np.zeros((4, 27, 28), np.uint8)), "images of 27x28 pixels"),
        ("too many", FILES[2], head[:4] + struct.pack(">3I", 60001, 28, 28),
         "declares 60001 items; Fashion-MNIST's files hold at most 60000"),
    ]


@pytest.mark.parametrize("what,name,data,message", _mutations(), ids=[m[0] for m in _mutations()])
def test_a_malformed_file_is_one_error_naming_it(tmp_path, what, name, data, message):
    _, sums = good(tmp_path)
    (tmp_path / f"{name}.gz").unlink()
    (tmp_path / name).write_bytes(data)
    with pytest.raises(ValueError) as err:
        read_fashion_mnist(tmp_path, checksums=sums)
    text = str(err.value)
    assert text.startswith(f"{tmp_path / name}:") and message in text and "\n" not in text


def test_a_broken_gzip_stream_is_one_error_naming_it(tmp_path):
    _, sums = good(tmp_path)
    path = tmp_path / f"{FILES[2]}.gz"
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}: (cannot be read|truncated)"):
        read_fashion_mnist(tmp_path, checksums=sums)


def test_altered_content_is_refused_by_name(tmp_path):
    # well-formed files that are not the official ones: the embedded SHA-256 refuses the first
    good(tmp_path)
    with pytest.raises(ValueError, match=rf"^{re.escape(str(tmp_path / FILES[0]))}\.gz: its content \(SHA-256 [0-9a-f]{{64}}\) is not "
                                         rf"the official {FILES[0]} \(SHA-256 c59f468a"):
        read_fashion_mnist(tmp_path)
    # one byte changed in one file, checked against the digests of the originals
    arr, sums = good(tmp_path / "b")
    labels = arr[FILES[3]].copy()
    labels[0] = (labels[0] + 1) % 10
    write(tmp_path / "b", {FILES[3]: idx_bytes(labels)})
    with pytest.raises(ValueError, match=rf"{re.escape(str(tmp_path / 'b' / FILES[3]))}\.gz: its content .* refusing it$"):
        read_fashion_mnist(tmp_path / "b", checksums=sums)


def test_labels_out_of_range_and_counts_that_differ_are_refused(tmp_path):
    arr = arrays()
    bad = dict(arr)
    bad[FILES[1]] = arr[FILES[1]].copy()
    bad[FILES[1]][3] = 10
    sums = write(tmp_path / "a", {n: idx_bytes(a) for n, a in bad.items()})
    with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte.gz: labels must lie in \[0, 10\); found 10"):
        read_fashion_mnist(tmp_path / "a", checksums=sums)
    short = dict(arr)
    short[FILES[3]] = arr[FILES[3]][:-1]
    sums = write(tmp_path / "b", {n: idx_bytes(a) for n, a in short.items()})
    with pytest.raises(ValueError, match=f"holds {N_TEST} images but .* holds {N_TEST - 1} labels"):
        read_fashion_mnist(tmp_path / "b", checksums=sums)


def test_missing_files_say_how_to_get_them(tmp_path):
    _, sums = good(tmp_path)
    (tmp_path / f"{FILES[1]}.gz").unlink()
    for folder, where in ((tmp_path, f"missing {FILES[1]} (raw or .gz)"), (tmp_path / "none", "the folder does not exist")):
        with pytest.raises(FileNotFoundError) as err:
            load_dataset("fashion-mnist", folder)
        text = str(err.value)
        assert text.startswith(f"Fashion-MNIST not found in {folder}: {where}; ") and "\n" not in text
        assert "apt-get install dataset-fashion-mnist" in text and "--data-dir" in text


def test_the_cli_refuses_a_folder_without_the_files_in_one_line(tmp_path, capsys):
    code = main(["confmix-study", "--dataset", "fashion-mnist", "--data-dir", str(tmp_path), "--out", str(tmp_path / "o"),
                 "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "apt-get install dataset-fashion-mnist" in err
    assert not (tmp_path / "o").exists()


REAL = all(any((Path(DEFAULT_DIR) / f"{n}{ext}").is_file() for ext in (".gz", "")) for n in FILES)


@pytest.mark.skipif(not REAL, reason=f"Fashion-MNIST is not installed in {DEFAULT_DIR} (apt-get install dataset-fashion-mnist)")
def test_the_official_files_when_installed():
    data = load_dataset("fashion-mnist")
    assert data.x_train.shape == (60000, 1, 28, 28) and data.x_test.shape == (10000, 1, 28, 28)
    assert torch.bincount(data.y_train).tolist() == [6000] * 10 and torch.bincount(data.y_test).tolist() == [1000] * 10
    # the published statistics of Fashion-MNIST's training pixels: mean 0.2860, std 0.3530 (of 255)
    assert data.channel_mean[0] / 255 == pytest.approx(0.2860, abs=5e-5)
    assert data.channel_std[0] / 255 == pytest.approx(0.3530, abs=5e-5)


# ---------------------------------------------------------------------------- the study


def test_presets_are_the_papers_protocol_and_its_scaled_cpu_version():
    paper, cpu = PRESETS["paper"], PRESETS["cpu"]
    assert (paper.train_fraction, paper.epochs, paper.batch_size, paper.warmup_epochs, paper.half_life, paper.seeds) == (
        1.0, 50, 250, 5, 25.0, 5)
    assert paper.methods == METHODS and len(METHODS) == 11 and cpu.methods == METHODS and cpu.seeds == 5
    assert cpu.dataset == "fashion-mnist" and cpu.optimizer == paper.optimizer and cpu.lr == paper.lr
    assert cpu.warmup_epochs == cpu.epochs / 10 and cpu.half_life == cpu.epochs / 2  # 5 and 25 of 50
    n = round(60000 * cpu.train_fraction)
    assert n // cpu.batch_for(n) >= 5
    # the folder is not a setting of the results (the content is checked), so a copy elsewhere resumes
    assert "data_dir" not in cpu.settings() and "data_dir" in PRESETS["paper"].settings()
    with pytest.raises(ValueError, match="only used with datasets 'cifar10' and 'fashion-mnist'"):
        ConfMixStudyConfig(data_dir="/somewhere")


def test_shards_trained_at_once_in_processes_give_the_same_rows(tmp_path):
    cfg = ConfMixStudyConfig(seeds=2, epochs=2, warmup_epochs=1, train_fraction=0.1,
                             methods=("erm", "input-confmix", "manifold-ramp-up"))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # in this process, as each of two workers will be
        run_confmix_study(cfg, tmp_path / "one", progress=False)
        torch.set_num_threads(2)  # two workers share two threads: one each
        run_confmix_study(cfg, tmp_path / "two", progress=False, workers=2)
    finally:
        torch.set_num_threads(threads)
    assert (tmp_path / "one" / "results.csv").read_text() == (tmp_path / "two" / "results.csv").read_text()
    assert len((tmp_path / "two" / "results.csv").read_text().splitlines()) == 1 + 6
    with pytest.raises(ValueError, match="cannot be combined with executor 'ray'"):
        run_confmix_study(cfg, tmp_path / "x", executor="ray", workers=2)


# ---------------------------------------------------------------------------- ConfMix on 1x28x28


class Recorded(mm.ConfMix):
    """ConfMix that keeps the confidences it is given (fresh) or reads (cached), per call."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen = []

    def alpha(self, epoch, batch_size, *, confidence=None, **kw):
        if confidence is not None:
            self.seen.append(confidence.detach().clone())
        return super().alpha(epoch, batch_size, confidence=confidence, **kw)

    def cached_confidence(self, index, num_classes):
        got = super().cached_confidence(index, num_classes)
        self.seen.append(got.detach().clone())
        return got


def _images(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_fresh_confmix_prefix_reuse_gives_the_separate_forwards_confidences():
    x, y = _images()
    seen = {}
    for reuse in (True, False):
        model = mm.models.paper_cnn((1, 28, 28), 10, generator=torch.Generator().manual_seed(0))
        pol = Recorded(warmup_epochs=0)
        mixer = mm.ManifoldMixup(model, mm.models.PAPER_CNN_MIX_LAYER, alpha=pol, generator=1, reuse_prefix=reuse)
        mixer(x, y)
        seen[reuse] = pol.seen[0]
        with torch.no_grad():  # the reference: the model's own eval-mode forward, by hand
            expect = torch.softmax(model.eval()(x), -1).amax(-1)
    assert seen[True].shape == (16,)
    assert torch.allclose(seen[True], seen[False], atol=1e-6, rtol=0)
    assert torch.allclose(seen[True], expect, atol=1e-6, rtol=0)


def test_cached_confmix_reads_the_previous_epochs_outputs_of_the_same_samples():
    x, y = _images(24, seed=2)
    model = mm.models.paper_cnn((1, 28, 28), 10, generator=torch.Generator().manual_seed(3))
    pol = Recorded(warmup_epochs=1, confidence="cached")
    mixer = mm.ManifoldMixup(model, mm.models.PAPER_CNN_MIX_LAYER, alpha=pol, generator=4, num_classes=10)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(5)
    outputs = []  # per epoch: max softmax of each sample's training output [24]
    checked = 0
    for epoch in range(3):
        out = torch.full((24,), float("nan"))
        order = torch.randperm(24, generator=g)
        for s in range(3):
            idx = order[8 * s: 8 * s + 8]
            mixer.set_epoch(epoch + s / 3)
            before = len(pol.seen)
            logits, targets = mixer(x[idx], y[idx], index=idx)
            if epoch >= 1:  # after the warm-up: what ConfMix read is last epoch's output at these indices
                assert len(pol.seen) == before + 1
                assert torch.allclose(pol.seen[-1], outputs[-1][idx], atol=1e-6, rtol=0)
                checked += 1
            out[idx] = torch.softmax(logits.detach(), -1).amax(-1)
            loss = mm.soft_cross_entropy(logits, targets)
            opt.zero_grad()
            loss.backward()
            opt.step()
        outputs.append(out)
    assert checked == 6 and not torch.equal(outputs[1], outputs[2])  # the model moved between epochs


@pytest.mark.skipif(not REAL, reason=f"Fashion-MNIST is not installed in {DEFAULT_DIR} (apt-get install dataset-fashion-mnist)")
def test_the_cli_preset_is_the_base_that_flags_replace(tmp_path, study_settings):
    from dataclasses import replace

    seen = study_settings
    assert main(["confmix-study", "--preset", "cpu", "--epochs", "3", "--out", str(tmp_path)]) == 130
    assert seen["settings"] == replace(PRESETS["cpu"], epochs=3).settings()
