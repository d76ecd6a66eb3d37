"""Manifold Mixup and adaptive mixing (ConfMix) for any PyTorch model."""
