"""`seq2seq-score hyp=<file> ref=<file> [ref_field=<name>] [metrics=[bleu,chrf,ter,rouge]] [json=<file>]`."""
from __future__ import annotations

import json
from pathlib import Path

import hydra
from omegaconf import DictConfig

from seq2seq.cli import Command
from seq2seq.config import config_dir, setup_logging


def score_files(cfg: DictConfig) -> dict:
    """Score hypotheses against references: one per line of a text file, or with hyp_field/ref_field one
    string field per line of a JSON Lines file (newlines inside a field stay: rougeLsum splits at them)."""
    from seq2seq.data.corpus import read_documents
    from seq2seq.metrics import score

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


COMMAND = Command("score")  # one-line error reports and exit codes: seq2seq.cli


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="score")
@COMMAND.task
def _hydra_main(cfg: DictConfig) -> None:
    score_files(cfg)


def main() -> None:
    COMMAND.run(_hydra_main)


if __name__ == "__main__":
    main()
