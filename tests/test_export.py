"""seq2seq-export (Hugging Face, CTranslate2) and seq2seq-decode backend=ctranslate2: same greedy outputs as ours."""
from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("transformers", reason="the exports need the export extra: pip install -e '.[export]'")
pytest.importorskip("ctranslate2", reason="the exports need the export extra: pip install -e '.[export]'")

from helpers.commands import compose, run_cli  # noqa: E402
from helpers.corpora import tiny_train_overrides, toy_corpus_lines, write_corpus  # noqa: E402
from helpers.models import TOY_SYMBOLS, toy_pairs, train_toy_model, transformer_config  # noqa: E402
from seq2seq.data.batching import pad_source  # noqa: E402
from seq2seq.data.tokenizer import EOS, PAD  # noqa: E402
from seq2seq.generation.options import GenerationOptions  # noqa: E402
from seq2seq.generation.search import generate  # noqa: E402
from seq2seq.models.model import build_model  # noqa: E402
from seq2seq.training.checkpoint import CheckpointError, save_checkpoint  # noqa: E402

# MarianTokenizer asks for sacremoses, which only its unused normalize() would read
pytestmark = pytest.mark.filterwarnings("ignore:Recommended. pip install sacremoses")

VOCAB = 4 + TOY_SYMBOLS
GREEDY = GenerationOptions(strategy="greedy", max_len_a=0.0, max_len_b=20)


def layer_norm_config(pre_norm: bool) -> dict:
    cfg = transformer_config(layers=2, dim=32, heads=2, ffn=64)
    cfg["encoder"]["pre_norm"] = cfg["decoder"]["pre_norm"] = pre_norm
    return cfg


@pytest.fixture(scope="module", params=[True, False], ids=["pre_norm", "post_norm"])
def reversal_model(request):
    """A small Transformer that has learned to reverse sequences, pre-norm and post-norm."""
    torch.manual_seed(0)
    return train_toy_model(build_model(layer_norm_config(request.param), VOCAB, VOCAB), steps=150)


@pytest.fixture(scope="module")
def sources():
    return [src for src, _ in toy_pairs(40, seed=7, min_len=2, max_len=10)]


def ours(model, sources, opts=GREEDY):
    return [hyps[0].tokens for hyps in generate(model, pad_source(sources), opts)]


def strip(row: list[int]) -> list[int]:
    """HF output ids without the start token, EOS and padding."""
    row = row[1:]
    return row[: row.index(EOS)] if EOS in row else row


class ToyPieces:
    """A SentencePiece stand-in for the toy ids (what the exports read of the tokenizer)."""

    def get_piece_size(self):
        return VOCAB

    def id_to_piece(self, i):
        return ["<pad>", "<unk>", "<s>", "</s>"][i] if i < 4 else f"t{i}"


def test_huggingface_greedy_equals_ours(reversal_model, sources, tmp_path):
    from transformers import AutoModelForSeq2SeqLM

    from seq2seq.export.huggingface import huggingface_generation_config, huggingface_model

    hf = huggingface_model(reversal_model)
    expected = "PegasusForConditionalGeneration" if reversal_model.encoder.layers[0].pre_norm else "MarianMTModel"
    assert type(hf).__name__ == expected
    hf.generation_config = huggingface_generation_config(None, reversal_model.max_positions)
    hf.save_pretrained(tmp_path)
    loaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path).eval()
    src = pad_source(sources)
    with torch.no_grad():
        out = loaded.generate(input_ids=src, attention_mask=src.ne(PAD), num_beams=1, do_sample=False,
                              max_new_tokens=GREEDY.max_len_b + 1)
    theirs = [strip(row) for row in out.tolist()]
    assert theirs == ours(reversal_model, sources)
    assert sum(t == s[::-1] for t, s in zip(theirs, sources)) >= 20  # outputs worth comparing


def test_ctranslate2_float32_greedy_equals_ours(reversal_model, sources, tmp_path):
    import ctranslate2
    from ctranslate2.converters.converter import Converter

    from seq2seq.export.ctranslate2 import ctranslate2_spec

    class Toy:
        src = tgt = ToyPieces()

    spec = ctranslate2_spec(reversal_model, Toy())

    class _Converter(Converter):
        def _load(self):
            return spec

    _Converter().convert(str(tmp_path / "ct2"), force=True)
    translator = ctranslate2.Translator(str(tmp_path / "ct2"), compute_type="float32", intra_threads=1)
    pieces = [[ToyPieces().id_to_piece(i) for i in s] for s in sources]
    out = translator.translate_batch(pieces, beam_size=1, max_decoding_length=GREEDY.max_len_b)
    theirs = [[int(p[1:]) for p in r.hypotheses[0]] for r in out]
    assert theirs == ours(reversal_model, sources)


def test_rnn_and_copy_models_are_refused():
    from seq2seq.export.shapes import exportable_shape

    rnn = {"embed_dim": 16, "dropout": 0.0, "max_positions": 32, "share_embeddings": True, "tie_output": True,
           "encoder": {"_target_": "seq2seq.models.rnn_encoder.RNNEncoder", "cell": "lstm", "layers": 1, "hidden_size": 8,
                       "bidirectional": True, "dropout": 0.0},
           "decoder": {"_target_": "seq2seq.models.rnn.RNNDecoder", "cell": "lstm", "layers": 1, "hidden_size": 16,
                       "dropout": 0.0, "input_feeding": True, "bridge": "zero"},
           "attention": {"_target_": "seq2seq.models.luong.LuongAttention", "score": "general"}}
    with pytest.raises(ValueError, match="only Transformer models .* RNNEncoder encoder and a RNNDecoder decoder"):
        exportable_shape(build_model(rnn, VOCAB, VOCAB))
    copy = {**transformer_config(layers=1, dim=16, heads=2, ffn=32),
            "output": {"_target_": "seq2seq.models.copy.PointerGenerator", "name": "pointer_generator",
                       "attention_layer": -1, "attention_head": -1}}
    with pytest.raises(ValueError, match=r"copy models \(model/output=pointer_generator\) cannot be exported"):
        exportable_shape(build_model(copy, VOCAB, VOCAB))


def test_checkpoint_with_the_old_position_layout_is_refused(tmp_path):
    from seq2seq.data.tokenizer import Tokenizer, train_sentencepiece
    from seq2seq.decode import load_run

    src, tgt = toy_corpus_lines(200, seed=1)
    spm = train_sentencepiece(src + tgt, tmp_path / "spm" / "spm", model_type="unigram", vocab_size=60,
                              character_coverage=1.0, max_sentences=10_000)
    tokenizer = Tokenizer(spm).save(tmp_path / "run" / "tokenizer")
    cfg = transformer_config(layers=1, dim=16, heads=2, ffn=32)
    model = build_model(cfg, tokenizer.src_vocab_size, tokenizer.tgt_vocab_size)
    old = {k: v for k, v in model.state_dict().items() if not k.endswith("positions.layout")}  # as written before
    save_checkpoint({"model": old, "model_config": cfg}, tmp_path / "run" / "checkpoints" / "best.pt")
    with pytest.raises(CheckpointError, match="predates the change of the Transformer's sinusoidal position layout"):
        load_run(tmp_path / "run")
    save_checkpoint({"model": model.state_dict(), "model_config": cfg}, tmp_path / "run" / "checkpoints" / "last.pt")
    load_run(tmp_path / "run", "last")


def _decode(run, lines, tmp_path, name, **keys):
    """seq2seq.decode.decode with conf/decode.yaml composed as the command line would (greedy, 12 tokens)."""
    from seq2seq.decode import decode

    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n")
    given = {"run": run, "input": tmp_path / "in.txt", "output": tmp_path / name, "precision": "fp32",
             "kernels.linear": "mkl", "kernels.attention": "fused", "device": "cpu", "threads": 1,
             "batch_tokens": 500, "generation": "greedy", "generation.max_len_a": 0.0, "generation.max_len_b": 12,
             **keys}
    decode(compose("decode", *(f"{k}={v}" for k, v in given.items())))
    return (tmp_path / name).read_text().splitlines()


def test_cli_exports_and_ctranslate2_backend(tmp_path):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from seq2seq.data.tokenizer import Tokenizer

    root, run = tmp_path / "data", tmp_path / "run"
    write_corpus(root, n_train=600)
    run_cli("train", *tiny_train_overrides(root, run, steps=60), "trainer.valid_every=1000")
    hf_dir = tmp_path / "hf"
    proc = run_cli("export", f"run={run}", "format=huggingface", f"output={hf_dir}")
    assert "exported" in proc.stderr
    info = json.loads((hf_dir / "export.json").read_text())
    assert info["architecture"] == "PegasusForConditionalGeneration" and info["ids"]["decoder_start"] == 2
    lines = toy_corpus_lines(30, seed=9)[0] + [""]

    torch_out = _decode(run, lines, tmp_path, "torch.txt")
    ours_tokenizer = Tokenizer.load(hf_dir / "seq2seq_tokenizer")
    hf_tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    batch = hf_tokenizer(lines[:-1], return_tensors="pt", padding=True)
    assert [row[row.ne(PAD)].tolist() for row in batch.input_ids] == [ids + [EOS] for ids in
                                                                       ours_tokenizer.encode_src(lines[:-1])]
    model = AutoModelForSeq2SeqLM.from_pretrained(hf_dir).eval()
    with torch.no_grad():
        generated = model.generate(**batch, num_beams=1, do_sample=False, max_new_tokens=13)
    hf_out = hf_tokenizer.batch_decode(generated, skip_special_tokens=True)
    assert hf_out == torch_out[:-1]

    ct2_out = _decode(run, lines, tmp_path, "ct2.txt", backend="ctranslate2", compute_type="float32")
    assert ct2_out == torch_out and ct2_out[-1] == ""
    assert (run / "exports" / "ctranslate2-best" / "model.bin").is_file()
    int8 = _decode(run, lines, tmp_path, "int8.txt", backend="ctranslate2", compute_type="int8")
    assert len(int8) == len(lines)
    with pytest.raises(ValueError, match="backend=ctranslate2 reports no attention"):
        _decode(run, lines, tmp_path, "x.txt", backend="ctranslate2", attention=str(tmp_path / "attn"))
    # target prefixes through CTranslate2's target_prefix: the same outputs as ours
    # (even lines start with the first word of the next line's output: words the vocabulary has)
    prefixes = [" ".join(torch_out[(i + 1) % len(torch_out)].split()[:1]) if i % 2 == 0 else ""
                for i in range(len(torch_out))]
    (tmp_path / "prefix.txt").write_text("\n".join(prefixes) + "\n")
    torch_prefixed = _decode(run, lines, tmp_path, "tp.txt", prefix=str(tmp_path / "prefix.txt"))
    ct2_prefixed = _decode(run, lines, tmp_path, "cp.txt", prefix=str(tmp_path / "prefix.txt"),
                           backend="ctranslate2", compute_type="float32")
    assert ct2_prefixed == torch_prefixed and torch_prefixed != torch_out
    assert all(o.startswith(p) for o, p in zip(ct2_prefixed, prefixes))
