"""Any language pair of a corpus by override: data.src=de data.tgt=en trains the reverse direction,
with its own run name and its own preprocessing cache entry."""
from __future__ import annotations

import json
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from helpers.commands import run_cli
from helpers.corpora import overrides, toy_corpus_lines
from seq2seq.config import config_dir
from seq2seq.data.binarized import open_token_array
from seq2seq.data.tokenizer import Tokenizer


def composed(*args: str):
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose("train", overrides=list(args))


def test_the_run_name_follows_the_language_pair():
    forward = composed("recipe=multi30k_en_de_transformer")
    assert forward.name == "multi30k_en_de_transformer" and forward.data.name == "multi30k_en_de"
    reverse = composed("recipe=multi30k_en_de_transformer", "data.src=de", "data.tgt=en")
    assert reverse.name == "multi30k_de_en_transformer" and reverse.data.name == "multi30k_de_en"
    assert "/multi30k_de_en_transformer/" in reverse.run_dir
    assert (reverse.data.src, reverse.data.tgt) == ("de", "en")
    for recipe in ("multi30k_en_de_lstm_bahdanau", "multi30k_en_de_lstm_luong", "multi30k_en_de_lstm_luong_local"):
        assert composed(f"recipe={recipe}", "data.src=de", "data.tgt=en").name == recipe.replace("en_de", "de_en")
    assert composed("data.src=de", "data.tgt=en").name == "multi30k_de_en_transformer"  # no recipe: data.name


def write_en_de(root: Path, name: str = "pair") -> tuple[tuple[list[str], list[str]], tuple[list[str], list[str]]]:
    """A generated corpus with the file suffixes of a real one ({split}.en, {split}.de); the (en, de) lines
    of the training and validation splits."""
    folder = root / name
    folder.mkdir(parents=True)
    lines = {}
    for split, n, seed in (("train", 300, 1), ("val", 20, 2), ("test", 20, 3)):
        lines[split] = toy_corpus_lines(n, seed)
        for lang, text in zip(("en", "de"), lines[split]):
            (folder / f"{split}.{lang}").write_text("\n".join(text) + "\n")
    return lines["train"], lines["val"]


def cache_entries(cache: Path) -> set[Path]:
    """The complete preprocessing cache entries (one per fingerprint: tokenizer/, the token arrays, references)."""
    return {p for p in cache.iterdir() if (p / "done").is_file()} if cache.is_dir() else set()


def train_direction(root: Path, run: Path, src: str, tgt: str) -> None:
    args = [a for a in overrides(root, run, 2) if not a.startswith(("data.src=", "data.tgt=", "data.path="))]
    run_cli("train", *args, "data.path=pair", f"data.src={src}", f"data.tgt={tgt}")


def test_swapped_suffixes_train_the_reverse_direction_with_their_own_cache(tmp_path):
    (en, de), (val_en, val_de) = write_en_de(tmp_path)
    cache = tmp_path / "cache"
    train_direction(tmp_path, tmp_path / "de_en", "de", "en")
    reverse = OmegaConf.load(tmp_path / "de_en" / "config.yaml")
    assert reverse.name == "multi30k_de_en_transformer" and (reverse.data.src, reverse.data.tgt) == ("de", "en")
    (reverse_entry,) = cache_entries(cache)
    train_direction(tmp_path, tmp_path / "en_de", "en", "de")
    assert OmegaConf.load(tmp_path / "en_de" / "config.yaml").name == "multi30k_en_de_transformer"
    (forward_entry,) = cache_entries(cache) - {reverse_entry}  # the other direction did not reuse the entry

    for entry, source, target, reference in ((reverse_entry, de, en, val_en), (forward_entry, en, de, val_de)):
        tokenizer = Tokenizer.load(entry / "tokenizer")
        src, tgt = (open_token_array(entry / f"train.{side}").tolist() for side in ("src", "tgt"))
        assert src == tokenizer.encode_src(source) and tgt == tokenizer.encode_tgt(target)
        references = (entry / "valid.references.jsonl").read_text(encoding="utf-8").splitlines()
        assert [json.loads(line) for line in references] == reference  # de -> en: English
