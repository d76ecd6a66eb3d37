"""The image data sets by name: ``load_dataset(name, ...)`` for every name in ``DATASETS``.

One module per format: ``digits`` (scikit-learn's bundled 8x8 digits), ``cifar10`` (a local
copy in the official binary or python format, or the official archives) and ``fashion_mnist``
(the official idx files); ``images`` holds ``ImageDataset`` and what the loaders share. Nothing
downloads anything. Every loader returns an :class:`~manifold_mixup.paper.images.ImageDataset`
whose images are float32 ``[n, C, H, W]``, normalised per channel with the mean and standard
deviation of the *training* split.
"""

from __future__ import annotations

import os

from ..checks import check_choice
from .constants import DATASETS
from .cifar10 import BIN_FOLDER, PY_FOLDER, load_cifar10
from .digits import load_digits
from .images import ImageDataset

__all__ = ["DATASETS", "load_dataset"]


def load_dataset(
    name: str, data_dir: str | os.PathLike[str] | None = None, seed: int = 0, train_fraction: float = 1.0
) -> ImageDataset:
    """Load a data set by name.

    Args:
        name: one of :data:`DATASETS` (``"digits"``, ``"cifar10"``, ``"fashion-mnist"``), case-insensitive.
        data_dir: required for ``"cifar10"`` (see :func:`load_cifar10`); refused for ``"digits"``
            (scikit-learn bundles it: a folder given there would be silently ignored).
        seed: split seed for ``"digits"`` (CIFAR-10 uses its fixed official split) and the seed
            of the training subset.
        train_fraction: share of the training images kept, in ``(0, 1]``, stratified by class;
            the test set does not change.

    Returns:
        ImageDataset, x float32 ``[n, C, H, W]``, y int64 ``[n]``.
    """
    key = check_choice("dataset", name.strip().lower() if isinstance(name, str) else name, DATASETS)
    if key == "digits":
        if data_dir is not None:
            raise ValueError(f"data_dir {str(data_dir)!r} is only used with datasets 'cifar10' and 'fashion-mnist'; digits are bundled "
                             "with scikit-learn (leave it out)")
        return load_digits(seed=seed, train_fraction=train_fraction)
    if key == "cifar10":
        if data_dir is None:
            raise ValueError(
                "dataset 'cifar10' needs data_dir: a local folder holding "
                f"{BIN_FOLDER}/ or {PY_FOLDER}/ or an official archive (nothing is "
                "downloaded)"
            )
        return load_cifar10(data_dir, train_fraction=train_fraction, seed=seed)
    if key == "fashion-mnist":  # data_dir None: where the Debian package puts the files
        from .fashion_mnist import load_fashion_mnist

        return load_fashion_mnist(data_dir, train_fraction=train_fraction, seed=seed)
    raise AssertionError(f"constants.DATASETS names {key!r}, which load_dataset does not load")
