"""The image data sets' common form: ``ImageDataset`` (float32 ``[n, C, H, W]`` images normalised
per channel with the *training* split's statistics), stratified training subsets and the checks
every loader shares."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["ImageDataset", "channel_stats", "normalise", "make_dataset", "train_subset"]


@dataclass(frozen=True, eq=False)
class ImageDataset:
    """A train/test pair of image tensors.

    Attributes:
        x_train: float32 ``[n_train, C, H, W]``, normalised per channel.
        y_train: int64 ``[n_train]``, class indices in ``[0, num_classes)``.
        x_test: float32 ``[n_test, C, H, W]``, normalised with the training statistics.
        y_test: int64 ``[n_test]``.
        num_classes: number of classes.
        name: data set name (``"digits"``, ``"cifar10"``).
        channel_mean: per-channel mean ``(C,)`` of the raw training pixels (raw units:
            0..16 for digits, 0..255 for CIFAR-10); ``raw = x * channel_std + channel_mean``.
        channel_std: per-channel standard deviation ``(C,)`` of the raw training pixels.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    name: str
    channel_mean: tuple[float, ...] = ()
    channel_std: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            x = getattr(self, f"x_{split}")
            y = getattr(self, f"y_{split}")
            if not isinstance(x, torch.Tensor) or x.dtype != torch.float32 or x.dim() != 4:
                raise ValueError(
                    f"x_{split} must be a float32 torch.Tensor [n, C, H, W]; got "
                    f"{type(x).__name__} {getattr(x, 'dtype', None)} "
                    f"shape {tuple(getattr(x, 'shape', ()))}"
                )
            if not isinstance(y, torch.Tensor) or y.dtype != torch.int64 or y.dim() != 1:
                raise ValueError(
                    f"y_{split} must be an int64 torch.Tensor [n]; got {type(y).__name__} "
                    f"{getattr(y, 'dtype', None)} shape {tuple(getattr(y, 'shape', ()))}"
                )
            if x.shape[0] != y.shape[0]:
                raise ValueError(
                    f"x_{split} has {x.shape[0]} rows but y_{split} has {y.shape[0]}"
                )
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise ValueError(
                f"x_train images {tuple(self.x_train.shape[1:])} and x_test images "
                f"{tuple(self.x_test.shape[1:])} must have the same [C, H, W]"
            )
        if not isinstance(self.num_classes, int) or self.num_classes < 1:
            raise ValueError(f"num_classes must be a positive int; got {self.num_classes!r}")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        c, h, w = self.x_train.shape[1:]
        return (int(c), int(h), int(w))


def channel_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std (population) of ``x`` ``[n, C, H, W]``, float64 ``(C,)``.

    uint8 input is summarised exactly and cheaply through a 256-bin histogram per channel.
    A channel with zero spread gets std 1 so that normalising never divides by zero.
    """
    c = x.shape[1]
    mean = np.empty(c, dtype=np.float64)
    std = np.empty(c, dtype=np.float64)
    values = np.arange(256, dtype=np.float64)
    for k in range(c):
        channel = x[:, k]
        if x.dtype == np.uint8:
            # torch.bincount reads uint8 directly (np.bincount widens to intp first).
            flat = torch.from_numpy(np.ascontiguousarray(channel)).reshape(-1)
            counts = torch.bincount(flat, minlength=256).numpy().astype(np.float64)
            total = counts.sum()
            m = float((counts * values).sum() / total)
            var = float((counts * (values - m) ** 2).sum() / total)
        else:
            channel = channel.astype(np.float64)
            m = float(channel.mean())
            var = float(channel.var())
        mean[k] = m
        std[k] = np.sqrt(var) if var > 0 else 1.0
    return mean, std


def normalise(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
    """``(x - mean) / std`` per channel as a float32 tensor ``[n, C, H, W]``."""
    out = torch.from_numpy(np.ascontiguousarray(x)).to(torch.float32)
    out -= torch.from_numpy(mean.astype(np.float32))[None, :, None, None]
    out /= torch.from_numpy(std.astype(np.float32))[None, :, None, None]
    return out


def make_dataset(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    num_classes: int,
    name: str,
) -> ImageDataset:
    """Normalise raw ``[n, C, H, W]`` arrays with training statistics and wrap them."""
    mean, std = channel_stats(x_train)
    return ImageDataset(
        x_train=normalise(x_train, mean, std),
        y_train=torch.from_numpy(np.ascontiguousarray(y_train, dtype=np.int64)),
        x_test=normalise(x_test, mean, std),
        y_test=torch.from_numpy(np.ascontiguousarray(y_test, dtype=np.int64)),
        num_classes=num_classes,
        name=name,
        channel_mean=tuple(float(v) for v in mean),
        channel_std=tuple(float(v) for v in std),
    )


def train_subset(y: np.ndarray, train_fraction: float, seed: int, num_classes: int) -> np.ndarray:
    """Indices of a stratified subset of ``train_fraction`` of the training rows (all, in order,
    at 1.0): each class keeps its share, up to one row; drawn from ``seed``."""
    if train_fraction >= 1.0:
        return np.arange(len(y))
    from sklearn.model_selection import train_test_split

    keep = int(round(train_fraction * len(y)))
    if keep < num_classes:
        raise ValueError(
            f"train_fraction {train_fraction} keeps {keep} of {len(y)} training images, fewer than the "
            f"{num_classes} classes; use a larger fraction"
        )
    idx, _ = train_test_split(np.arange(len(y)), train_size=keep, random_state=seed, shuffle=True, stratify=y)
    return np.sort(idx)

