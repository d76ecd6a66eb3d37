"""Manifold Mixup with the Hugging Face ``Trainer``: override ``compute_loss``.

    python examples/hf_trainer.py --steps 50

A tiny BERT built from a config (random weights, nothing downloaded) learns a synthetic task:
is token 7 in the sequence? The sequences have different lengths, padded, with an attention
mask. The mixer mixes the output of one encoder block; each mixed row keeps its own attention
mask. For a real model, use ``from_pretrained`` as usual and pick a block name from
``model.named_modules()``.
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

import manifold_mixup as mm

VOCAB, LENGTH, MARK = 32, 16, 7


class MixupTrainer(Trainer):
    """A ``Trainer`` whose training loss is Manifold Mixup's; evaluation is the model's own loss."""

    def __init__(self, *args, mix_layers: list[str], alpha: float = 1.0, mix_seed: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.mix_layers, self.alpha, self.mix_seed = mix_layers, alpha, mix_seed
        self.mixer = None

    def compute_loss(self, model, inputs, return_outputs=False, **kwargs):
        if self.mixer is None:  # ``model`` may be a wrapper (DDP under torchrun): the mixer calls it as given
            self.mixer = mm.ManifoldMixup(model, self.mix_layers, alpha=self.alpha,
                                          generator=torch.Generator().manual_seed(self.mix_seed))
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        self.mixer.set_epoch(self.state.epoch or 0.0)
        logits, targets = self.mixer(inputs, labels)  # a mapping batch: model(**inputs); eval mode: no mixing
        loss = mm.soft_cross_entropy(logits, targets)
        return (loss, {"logits": logits}) if return_outputs else loss


def synthetic(n: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """n sequences of 4..LENGTH tokens (ids 2..VOCAB-1, 0 pads); label 1 where token MARK occurs."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        length = int(torch.randint(4, LENGTH + 1, (1,), generator=g))
        ids = torch.zeros(LENGTH, dtype=torch.long)
        ids[:length] = torch.randint(2, VOCAB, (length,), generator=g)
        mask = (torch.arange(LENGTH) < length).long()
        rows.append({"input_ids": ids, "attention_mask": mask, "labels": torch.tensor(int((ids == MARK).any()))})
    return rows


def accuracy(pred) -> dict[str, float]:
    return {"accuracy": float((pred.predictions.argmax(-1) == pred.label_ids).mean())}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=50, help="optimiser steps (default 50)")
    ap.add_argument("--batch-size", type=int, default=16, help="batch size (default 16)")
    ap.add_argument("--alpha", type=float, default=1.0, help="lambda ~ Beta(alpha, alpha) (default 1.0)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the data, weights and mixing (default 0)")
    args = ap.parse_args(argv)
    if args.steps < 1:
        ap.error(f"--steps must be >= 1; got {args.steps}")
    if args.batch_size < 2:
        ap.error(f"--batch-size must be >= 2 (mixing pairs rows); got {args.batch_size}")

    config = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=LENGTH, num_labels=2, pad_token_id=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        model = BertForSequenceClassification(config)
    block = "bert.encoder.layer.1"
    assert block in dict(model.named_modules())

    with tempfile.TemporaryDirectory() as out:
        targs = TrainingArguments(
            output_dir=out, max_steps=args.steps, per_device_train_batch_size=args.batch_size,
            per_device_eval_batch_size=64, learning_rate=1e-3, seed=args.seed, data_seed=args.seed,
            report_to=[], save_strategy="no", logging_strategy="no", disable_tqdm=True, use_cpu=True,
        )
        trainer = MixupTrainer(model=model, args=targs, train_dataset=synthetic(512, args.seed),
                               eval_dataset=synthetic(256, args.seed + 1), mix_layers=[block], alpha=args.alpha,
                               mix_seed=args.seed, compute_metrics=accuracy)
        train = trainer.train()
        metrics = trainer.evaluate()
    result = {"steps": train.global_step, "train_loss": round(train.training_loss, 4),
              "eval_loss": round(metrics["eval_loss"], 4), "eval_accuracy": round(metrics["eval_accuracy"], 4)}
    print(result)
    return result


if __name__ == "__main__":
    main()
