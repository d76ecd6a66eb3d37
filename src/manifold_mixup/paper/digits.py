"""scikit-learn's bundled 8x8 digits (1,797 images, 10 classes), split by a seed."""

from __future__ import annotations

import numpy as np

from ..checks import STUDY_SEED_MAX, check_real, check_seed
from .images import ImageDataset, make_dataset, train_subset

__all__ = ["load_digits"]


def load_digits(seed: int = 0, test_fraction: float = 0.25, train_fraction: float = 1.0) -> ImageDataset:
    """scikit-learn's bundled 8x8 digits (1797 images, 10 classes), split stratified.

    Args:
        seed: seed of the stratified train/test split (same seed, same split) and of the
            training subset.
        test_fraction: share of the images in the test split, in ``(0, 1)``.
        train_fraction: share of the training split kept, in ``(0, 1]``: a stratified subset
            (the test split does not change); normalised with the subset's own statistics.

    Returns:
        ImageDataset with x ``[n, 1, 8, 8]`` float32 (normalised with the training
        split's mean/std) and y int64; ``name="digits"``, ``num_classes=10``.
    """
    from sklearn.datasets import load_digits as _sk_load_digits
    from sklearn.model_selection import train_test_split

    seed = check_seed("seed", seed, STUDY_SEED_MAX)
    if isinstance(test_fraction, bool) or not isinstance(
        test_fraction, (int, float, np.floating)
    ) or not (0.0 < float(test_fraction) < 1.0):
        raise ValueError(
            f"test_fraction must be a float strictly between 0 and 1; got {test_fraction!r}"
        )
    train_fraction = check_real("train_fraction", train_fraction, 0, 1, low_open=True)
    bunch = _sk_load_digits()
    x = np.asarray(bunch.data, dtype=np.float64).reshape(-1, 1, 8, 8)
    y = np.asarray(bunch.target, dtype=np.int64)
    idx_train, idx_test = train_test_split(
        np.arange(len(y)),
        test_size=float(test_fraction),
        random_state=seed,
        shuffle=True,
        stratify=y,
    )
    idx_train = idx_train[train_subset(y[idx_train], train_fraction, seed, 10)]
    return make_dataset(
        x[idx_train], y[idx_train], x[idx_test], y[idx_test], num_classes=10, name="digits"
    )
