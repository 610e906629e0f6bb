"""`seq2seq-export run=<run> format=huggingface|ctranslate2 output=<folder> [checkpoint=best|last|averaged|<file>]`.

Writes a trained Transformer as a model that another library loads and decodes with the same outputs:

* format=huggingface: a folder for `transformers`' from_pretrained. Post-norm models become MarianMTModel,
  pre-norm models PegasusForConditionalGeneration (Pegasus is Marian with pre-norm layers and final layer
  norms: both have this project's sinusoidal positions from 0, sqrt(dim)-scaled embeddings, ReLU, biases,
  layer norms with eps 1e-5, and a bias-free output layer). Greedy decoding with `generate` gives the same
  tokens as `seq2seq-decode generation=greedy`. The folder also holds a MarianTokenizer (source.spm,
  target.spm, vocab.json: AutoTokenizer loads it and appends EOS like this project does) and
  generation_config.json with the run's decoding settings where HF has them.
* format=ctranslate2: a CTranslate2 model folder (model.bin, config.json, vocabularies) built with
  ctranslate2.specs; CTranslate2 appends EOS to the source itself, and starts the target with <s>.
  `seq2seq-decode backend=ctranslate2` exports a run this way by itself (seq2seq.backends.ctranslate2).

Both copy the run's SentencePiece model(s) and tokenizer settings into <output>/seq2seq_tokenizer/ and describe
the ids and the tokenization in <output>/export.json. RNN models and copy models (model/output=pointer_generator)
have no counterpart in either library and are refused. Needs `pip install seq2seq[export]`.
"""
from __future__ import annotations

import logging
from pathlib import Path

from seq2seq.config import setup_logging
from seq2seq.export.ctranslate2 import export_ctranslate2
from seq2seq.export.huggingface import export_huggingface
from seq2seq.export.shapes import copy_tokenizer, describe, exportable_shape, require
from seq2seq.runs import RunFolder

log = logging.getLogger("seq2seq.export")

FORMATS = ("huggingface", "ctranslate2")


def export_run(run: str | Path, fmt: str, output: str | Path, checkpoint: str = "best") -> Path:
    """Export a run's checkpoint into the folder output (created; replaced files are overwritten)."""
    if fmt not in FORMATS:
        raise ValueError(f"format={fmt}: choose one of {', '.join(FORMATS)}")
    require("transformers" if fmt == "huggingface" else "ctranslate2", f"format={fmt}")
    folder_of_run = RunFolder(Path(run))
    model, tokenizer, path = folder_of_run.load(checkpoint)
    exportable_shape(model)
    folder = Path(output)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"output={folder} exists and is not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    if fmt == "huggingface":
        export_huggingface(model, tokenizer, folder, folder_of_run.generation_options())
    else:
        export_ctranslate2(model, tokenizer, folder)
    copy_tokenizer(tokenizer, folder)
    describe(folder, fmt, path, model, tokenizer)
    log.info("exported %s as %s into %s", path, fmt, folder)
    return folder


def export_command(cfg) -> Path:
    """seq2seq-export: cfg.run's cfg.checkpoint as cfg.format into cfg.output."""
    setup_logging()
    return export_run(cfg.run, cfg.format, cfg.output, cfg.checkpoint)
