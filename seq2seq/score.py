"""`seq2seq-score hyp=<file> ref=<file> [metrics=[bleu,chrf,ter,rouge]] [json=<file>]`."""
from __future__ import annotations

import json
from pathlib import Path

import hydra
from omegaconf import DictConfig

from seq2seq.config import config_dir, setup_logging


def score_files(cfg: DictConfig) -> dict:
    from seq2seq.data.corpus import read_lines
    from seq2seq.metrics import score

    setup_logging()
    hyps, refs = read_lines(cfg.hyp), read_lines(cfg.ref)
    if len(hyps) != len(refs):
        raise ValueError(f"{cfg.hyp} has {len(hyps)} lines but {cfg.ref} has {len(refs)}")
    scores = score(hyps, refs, list(cfg.metrics), tokenize=cfg.tokenize, lowercase=cfg.lowercase)
    for name, result in scores.items():
        print(result["text"] if name == "rouge" else f"{result['text']}\n  signature: {result['signature']}")
    if cfg.json:
        Path(cfg.json).write_text(json.dumps(scores, indent=2) + "\n")
    return scores


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="score")
def _hydra_main(cfg: DictConfig) -> None:
    score_files(cfg)


def main() -> None:
    _hydra_main()


if __name__ == "__main__":
    main()
