"""Test models, data and helpers shared by the test files. The hand-written mixing reference that
the tests hold the mixer to is ``hand_mixing.py`` (the benchmark's twins use it too)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

import manifold_mixup as mm


class Residual(nn.Module):
    """A residual network with a branch: stem -> block (h + f(h)) -> head."""

    def __init__(self, width: int = 8, d: int = 4, k: int = 3):
        super().__init__()
        self.stem = nn.Linear(d, width)
        self.block = nn.Sequential(nn.Linear(width, width), nn.Tanh())
        self.head = nn.Linear(width, k)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        h = h + self.block(h)
        return self.head(h)


class Block(nn.Module):
    """A residual block ``h + tanh(fc(h))``."""

    def __init__(self, w: int):
        super().__init__()
        self.fc = nn.Linear(w, w)
        self.act = nn.Tanh()

    def forward(self, h):
        return h + self.act(self.fc(h))


class Blocks(nn.Module):
    """stem -> residual blocks -> head; ``ckpt`` ("reentrant" or "non-reentrant") runs each block
    through ``torch.utils.checkpoint``, None runs them plainly."""

    def __init__(self, ckpt: str | None = None, w: int = 8, depth: int = 3, d: int = 4, k: int = 3):
        super().__init__()
        self.stem = nn.Linear(d, w)
        self.blocks = nn.ModuleList(Block(w) for _ in range(depth))
        self.head = nn.Linear(w, k)
        self.ckpt = ckpt

    def forward(self, x):
        h = self.stem(x)
        for blk in self.blocks:
            h = blk(h) if self.ckpt is None else checkpoint(blk, h, use_reentrant=self.ckpt == "reentrant")
        return self.head(h)


class LastStep(nn.Module):
    """An LSTM encoder (its output is a tuple: the states and (h, c)) and a head on the last step."""

    def __init__(self, d: int = 4, k: int = 2):
        super().__init__()
        self.enc = nn.LSTM(d, 4, batch_first=True)
        self.head = nn.Linear(4, k)

    def forward(self, x):
        out, _ = self.enc(x)
        return self.head(out[:, -1])


class TupleOut(nn.Module):
    """An encoder whose output is a tuple (hidden states ``2x``, an extra), and a head [B, 2]."""

    def __init__(self):
        super().__init__()
        self.enc = Encoder()
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        h, aux = self.enc(x)
        return self.head(h) + 0 * aux.sum()


class Encoder(nn.Module):
    def forward(self, x):
        return x * 2, torch.ones(1)


class KwModel(nn.Module):
    """Token ids [B, T] -> embedding -> body -> head, with extra arguments; returns {"logits": [B, 3]}."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.body = nn.Linear(4, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, input_ids, scale=1.0, mask=None):
        h = self.emb(input_ids).mean(1) * scale
        if mask is not None:
            h = h * mask
        return {"logits": self.head(torch.relu(self.body(h)))}


class FixedAlpha(mm.AlphaPolicy):
    """A policy that returns ``value`` (a number, or per-row values [B]) whatever the batch."""

    def __init__(self, value):
        super().__init__()
        self.value = value

    def alpha(self, epoch, batch_size, **given):
        return self.value


def data(b: int = 6, seed: int = 0, d: int = 4, k: int = 3):
    """Inputs [b, d] and class labels [b] in [0, k), from a seeded generator."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, d, generator=g), torch.randint(0, k, (b,), generator=g)


def grads(model):
    """Parameter gradients of ``model`` by name (zeros where a parameter got none), then cleared."""
    out = {n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p)) for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return out


def seeded(seed: int, make):
    """``make()`` with the global generator seeded (model constructors draw from it), leaving the
    global random state as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make()


def tiny_bert(layers: int = 2, positions: int = 8, labels: int = 3):
    """A Hugging Face ``BertForSequenceClassification`` from a tiny config (vocabulary 64, hidden 16,
    no dropout), weights from seed 0, in train mode; the test is skipped without transformers."""
    tf = pytest.importorskip("transformers")
    cfg = tf.BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=positions, num_labels=labels,
                        initializer_range=0.5, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return seeded(0, lambda: tf.BertForSequenceClassification(cfg)).train()


def assert_hook_free(*modules):
    """TorchScript compiles each module: it refuses a forward hook it cannot compile (a Python
    closure or bound method, such as the mixer's) on a module or its children, which is how a user
    exporting a model would meet a hook left behind. (A hook written as a scriptable function
    would pass: this checks for the mixer's kind of hook, not for every hook.)"""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # (torch.jit.script is deprecated, not gone)
        for module in modules:
            torch.jit.script(module)


@pytest.fixture
def study_settings(monkeypatch):
    """Stop the ConfMix study before any work and keep the settings it would run under:
    ``study_settings["settings"]`` after ``main([...]) == 130``."""
    import manifold_mixup.paper.studies.confmix as confmix

    seen: dict = {}

    def record(out, study, settings, *args, **kwargs):
        seen["settings"] = settings
        raise KeyboardInterrupt  # stop before any work

    monkeypatch.setattr(confmix, "run_study", record)
    return seen
