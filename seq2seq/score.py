"""`seq2seq-score hyp=<file> ref=<file> [ref_field=<name>] [metrics=[bleu,chrf,ter,rouge]] [json=<file>]`."""
from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig

from seq2seq.config import setup_logging
from seq2seq.data.corpus import read_documents
from seq2seq.metrics import score


def score_files(cfg: DictConfig) -> dict:
    """Score hypotheses against references: one per line of a text file, or with hyp_field/ref_field one
    string field per line of a JSON Lines file (newlines inside a field stay: rougeLsum splits at them)."""
    setup_logging()
    hyps, refs = read_documents(cfg.hyp, cfg.hyp_field), read_documents(cfg.ref, cfg.ref_field)
    if len(hyps) != len(refs):
        raise ValueError(f"{cfg.hyp} has {len(hyps)} lines but {cfg.ref} has {len(refs)}")
    scores = score(hyps, refs, list(cfg.metrics), tokenize=cfg.tokenize, lowercase=cfg.lowercase)
    for result in scores.values():
        print(f"{result['text']}\n  signature: {result['signature']}")
    if cfg.json:
        Path(cfg.json).write_text(json.dumps(scores, indent=2) + "\n")
    return scores


if __name__ == "__main__":  # python -m seq2seq.score: the seq2seq-score command
    from seq2seq.cli.score import main

    main()
