"""Small generated corpora on disk, and the overrides that train a tiny model on them in seconds."""
from __future__ import annotations

import random
from pathlib import Path


WORDS = "the a cat dog sees eats red blue small big house tree runs sleeps under over".split()
TRANSLATE = {w: w.upper()[::-1] for w in WORDS}


def toy_corpus_lines(n: int, seed: int) -> tuple[list[str], list[str]]:
    """A word-substitution 'translation' task: target words are the reversed, upper-cased source words."""
    rng = random.Random(seed)
    src, tgt = [], []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(2, 7))]
        src.append(" ".join(words))
        tgt.append(" ".join(TRANSLATE[w] for w in words))
    return src, tgt


def write_corpus(root: Path, name: str = "toy", n_train: int = 1500, n_valid: int = 40) -> Path:
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", n_train, 1), ("val", n_valid, 2), ("test", n_valid, 3)):
        src, tgt = toy_corpus_lines(n, seed)
        (folder / f"{split}.src").write_text("\n".join(src) + "\n")
        (folder / f"{split}.tgt").write_text("\n".join(tgt) + "\n")
    return folder


def tiny_train_overrides(root: Path, run_dir: Path, name: str = "toy", steps: int = 40) -> list[str]:
    """Command-line overrides that train a tiny model on write_corpus's data in seconds."""
    return [
        f"data.root={root}", f"data.path={name}", "data.src=src", "data.tgt=tgt",
        "data.splits.train=train", "data.splits.valid=val", "data.splits.test=test",
        f"data.cache_dir={root / 'cache'}", "data.batch_tokens=600",
        "tokenizer.vocab_size=80", "model.embed_dim=32", "model.max_positions=128",
        "model.encoder.layers=1", "model.encoder.heads=2", "model.encoder.ffn_dim=64",
        "model.decoder.layers=1", "model.decoder.heads=2", "model.decoder.ffn_dim=64",
        "model.attention.heads=2", "optim.lr=0.005", "lr_scheduler.warmup_steps=10",
        f"trainer.max_steps={steps}", "trainer.valid_every=20", "trainer.log_every=1", "trainer.progress=false",
        "threads=1", f"run_dir={run_dir}",
        # fixed choices: two runs compared float for float (resume) must not measure their way to different ones
        "kernels.linear=onednn", "kernels.attention=fused", "trainer.precision=fp32",
    ]


def overrides(root: Path, run: Path, steps: int, *extra: str) -> list[str]:
    return [*tiny_train_overrides(root, run, steps=steps), "trainer.valid_every=1000",
            "trainer.valid_max_sentences=4", *extra]
