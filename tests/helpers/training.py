"""A tiny Trainer in the test process."""
from __future__ import annotations

from pathlib import Path

import torch

from helpers.models import transformer_config
from seq2seq.data.pairs import filter_training_pairs
from seq2seq.data.prepare import prepare_data
from seq2seq.generation.options import GenerationOptions
from seq2seq.models.model import build_model
from seq2seq.training.trainer import Trainer, TrainerOptions


def make_trainer(root: Path, run: Path, steps: int, dist=None, config=None, optim=None, schedule=None,
                 **options) -> Trainer:
    """A tiny Trainer in this process (for what needs no second process); config: a model config
    (default a 1-layer Transformer), optim: optim keys to change, schedule: the lr_scheduler group."""
    splits = {"train": "train", "valid": "val", "test": "test"}
    data = prepare_data({"root": str(root), "path": "toy", "format": "text", "src": "src", "tgt": "tgt",
                         "splits": splits, "cache_dir": str(root / "cache"), "long_pairs": "drop", "workers": None},
                        {"model_type": "unigram", "vocab_size": 80, "joint": True, "character_coverage": 1.0,
                         "max_sentences": 10_000, "newline_piece": None, "byte_fallback": False, "threads": 2})
    config = config or transformer_config(layers=1, dim=32, heads=2, ffn=64, dropout=0.1, max_positions=128)
    data.train = filter_training_pairs(data.train, config["max_positions"], config["max_positions"])
    torch.manual_seed(1)
    model = build_model(config, data.tokenizer.src_vocab_size, data.tokenizer.tgt_vocab_size)
    opts = TrainerOptions(**{"max_steps": steps, "valid_every": 1000, "valid_max_sentences": 4, "log_every": 1,
                             "progress": False, "precision": "fp32", **options})
    optim = {"lr": 0.005, "betas": (0.9, 0.98), "eps": 1e-9, "weight_decay": 0.0, "clip_norm": 1.0,
             "label_smoothing": 0.1, "coverage_loss": 0.0, "coverage_from_step": 0, **(optim or {})}
    return Trainer(model, data, run, opts, optim=optim,
                   schedule=schedule or {"name": "inverse_sqrt", "warmup_steps": 10, "warmup_init_lr": 1e-7},
                   batch_tokens=600, valid_batch_tokens=2000, generation=GenerationOptions(strategy="greedy"),
                   model_config=config, seed=1, device=torch.device("cpu"), **({"dist": dist} if dist else {}))
