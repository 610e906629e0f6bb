"""Tiny models and the toy reversal task: configs, data, a training loop and a greedy oracle."""
from __future__ import annotations

import random

import torch

from seq2seq.data.batching import collate, pad_source
from seq2seq.data.tokenizer import BOS, EOS

TOY_SYMBOLS = 10  # ids 4 .. 13


def transformer_config(layers: int = 2, dim: int = 64, heads: int = 4, ffn: int = 128, dropout: float = 0.0,
                       max_positions: int = 64) -> dict:
    return {
        "embed_dim": dim, "dropout": dropout, "max_positions": max_positions, "share_embeddings": True,
        "tie_output": True,
        "encoder": {"_target_": "seq2seq.models.transformer.TransformerEncoder", "name": "transformer",
                    "layers": layers, "heads": heads, "ffn_dim": ffn, "dropout": dropout},
        "decoder": {"_target_": "seq2seq.models.transformer.TransformerDecoder", "name": "transformer",
                    "layers": layers, "heads": heads, "ffn_dim": ffn, "dropout": dropout},
        "attention": {"_target_": "seq2seq.models.attention.MultiHeadAttention", "name": "multihead", "heads": heads},
    }


def toy_pairs(n: int, seed: int, min_len: int = 3, max_len: int = 8) -> list[tuple[list[int], list[int]]]:
    """Reversal task over symbols 4..13: target is the source reversed."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        src = [rng.randrange(4, 4 + TOY_SYMBOLS) for _ in range(rng.randint(min_len, max_len))]
        pairs.append((src, src[::-1]))
    return pairs


def train_toy_model(model, steps: int = 400, batch_size: int = 64, lr: float = 2e-3, seed: int = 0, pairs=None,
                    decay: bool = False):
    """Adam on (source, target) id pairs (default: the reversal task), batch_size pairs a step; with decay the
    rate falls linearly to zero over the steps (the last updates settle instead of jumping at the full rate)."""
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / steps if decay else 1.0)
    data = pairs if pairs is not None else toy_pairs(steps * batch_size, seed)
    model.train()
    for step in range(steps):
        chunk = data[step * batch_size : (step + 1) * batch_size]
        batch = collate([s for s, _ in chunk], [t for _, t in chunk])
        loss = model(batch.src, batch.prev_tokens, batch.target).loss
        optimizer.zero_grad()
        (loss / batch.ntokens).backward()
        optimizer.step()
        schedule.step()
    model.eval()
    return model


def greedy_reference(model, src: list[int], max_len: int = 20) -> list[int]:
    """Plain greedy decoding by full recomputation, the slow obvious way (a test oracle)."""
    source = pad_source([src])
    prev = [BOS]
    with torch.no_grad():
        for _ in range(max_len):
            scores = model.scores(source, torch.tensor([prev]))
            logp = scores[0, -1].log_softmax(-1)
            logp[:4] = torch.where(torch.arange(4) == EOS, logp[:4], torch.tensor(float("-inf")))
            token = int(logp.argmax())
            if token == EOS:
                break
            prev.append(token)
    return prev[1:]
