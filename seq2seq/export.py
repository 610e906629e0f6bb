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
  `seq2seq-decode backend=ctranslate2` exports a run this way by itself (seq2seq.decode).

Both copy the run's SentencePiece model(s) and tokenizer settings into <output>/seq2seq_tokenizer/ and describe
the ids and the tokenization in <output>/export.json. RNN models and copy models (model/output=pointer_generator)
have no counterpart in either library and are refused. Needs `pip install seq2seq[export]`.
"""
from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import hydra
from omegaconf import DictConfig

from seq2seq.cli import Command
from seq2seq.config import config_dir, setup_logging
from seq2seq.data.tokenizer import BOS, EOS, PAD, UNK

log = logging.getLogger("seq2seq.export")

FORMATS = ("huggingface", "ctranslate2")
TOKENIZER_FOLDER = "seq2seq_tokenizer"


@dataclass(frozen=True)
class Shape:
    """What an exported model must reproduce of a Transformer EncoderDecoder."""

    dim: int
    encoder_layers: int
    decoder_layers: int
    encoder_heads: int
    decoder_heads: int
    encoder_ffn: int
    decoder_ffn: int
    pre_norm: bool
    shared_embeddings: bool  # one matrix for source and target embeddings
    tied_output: bool        # the output layer is the target embedding
    max_positions: int
    src_vocab: int
    tgt_vocab: int


def require(module: str, what: str) -> None:
    """A one-line error (ValueError) instead of an ImportError when the export extra is not installed."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ValueError(f"{what} needs the Python package {module}: pip install 'seq2seq[export]' "
                         f"(or pip install -e '.[export]' in a checkout)")


def exportable_shape(model) -> Shape:
    """The model's Shape, or a ValueError saying why it cannot be exported."""
    from seq2seq.models.output import OutputLayer
    from seq2seq.models.transformer import TransformerDecoder, TransformerEncoder

    enc, dec = model.encoder, model.decoder
    if not isinstance(enc, TransformerEncoder) or not isinstance(dec, TransformerDecoder):
        raise ValueError(f"only Transformer models (model/encoder=transformer, model/decoder=transformer) can be "
                         f"exported; this model has a {type(enc).__name__} encoder and a {type(dec).__name__} "
                         f"decoder")
    if not isinstance(model.output_layer, OutputLayer):
        raise ValueError(f"copy models (model/output=pointer_generator) cannot be exported: neither Hugging Face "
                         f"nor CTranslate2 has a pointer-generator output layer ({type(model.output_layer).__name__})")
    pre_norm = enc.layers[0].pre_norm
    if dec.layers[0].pre_norm != pre_norm:
        raise ValueError("cannot export a model whose encoder and decoder differ in pre_norm: exports have one "
                         "layer-norm placement for both")
    self_heads, cross_heads = dec.layers[0].self_attn.heads, dec.layers[0].cross_attn.heads
    if self_heads != cross_heads:
        raise ValueError(f"cannot export a decoder with {self_heads} self-attention heads and {cross_heads} "
                         f"cross-attention heads (model.attention.heads): exports use one number for both")
    tied = model.output_layer.weight is dec.embed.weight
    return Shape(dim=enc.output_dim, encoder_layers=len(enc.layers), decoder_layers=len(dec.layers),
                 encoder_heads=enc.layers[0].self_attn.heads, decoder_heads=self_heads,
                 encoder_ffn=enc.layers[0].ffn[0].out_features, decoder_ffn=dec.layers[0].ffn[0].out_features,
                 pre_norm=pre_norm, shared_embeddings=enc.embed is dec.embed, tied_output=tied,
                 max_positions=model.max_positions, src_vocab=enc.embed.num_embeddings,
                 tgt_vocab=dec.embed.num_embeddings)


# ---------------------------------------------------------------- Hugging Face

def _hf_attention(prefix: str, weight, bias, out) -> dict:
    """q/k/v/out projections from a packed [q; k; v] (or [k; v] after a separate q) projection."""
    return {f"{prefix}.{name}_proj.weight": w for name, w in weight} | \
           {f"{prefix}.{name}_proj.bias": b for name, b in bias} | \
           {f"{prefix}.out_proj.weight": out.weight, f"{prefix}.out_proj.bias": out.bias}


def _hf_norm(name: str, norm) -> dict:
    return {f"{name}.weight": norm.weight, f"{name}.bias": norm.bias}


def huggingface_weights(model, shape: Shape) -> dict:
    """The model's weights under Marian's / Pegasus's parameter names (positions excluded: HF computes them)."""
    enc, dec = model.encoder, model.decoder
    out = {}
    for i, layer in enumerate(enc.layers):
        p = f"model.encoder.layers.{i}"
        names = ("q", "k", "v")
        out |= _hf_attention(f"{p}.self_attn", zip(names, layer.self_attn.qkv_proj.weight.chunk(3)),
                             zip(names, layer.self_attn.qkv_proj.bias.chunk(3)), layer.self_attn.out_proj)
        out |= _hf_norm(f"{p}.self_attn_layer_norm", layer.norm1) | _hf_norm(f"{p}.final_layer_norm", layer.norm2)
        out |= {f"{p}.fc1.weight": layer.ffn[0].weight, f"{p}.fc1.bias": layer.ffn[0].bias,
                f"{p}.fc2.weight": layer.ffn[3].weight, f"{p}.fc2.bias": layer.ffn[3].bias}
    for i, layer in enumerate(dec.layers):
        p = f"model.decoder.layers.{i}"
        names = ("q", "k", "v")
        out |= _hf_attention(f"{p}.self_attn", zip(names, layer.self_attn.qkv_proj.weight.chunk(3)),
                             zip(names, layer.self_attn.qkv_proj.bias.chunk(3)), layer.self_attn.out_proj)
        cross = layer.cross_attn
        out |= _hf_attention(f"{p}.encoder_attn",
                             [("q", cross.q_proj.weight), *zip(("k", "v"), cross.kv_proj.weight.chunk(2))],
                             [("q", cross.q_proj.bias), *zip(("k", "v"), cross.kv_proj.bias.chunk(2))],
                             cross.out_proj)
        out |= _hf_norm(f"{p}.self_attn_layer_norm", layer.norm1)
        out |= _hf_norm(f"{p}.encoder_attn_layer_norm", layer.norm2) | _hf_norm(f"{p}.final_layer_norm", layer.norm3)
        out |= {f"{p}.fc1.weight": layer.ffn[0].weight, f"{p}.fc1.bias": layer.ffn[0].bias,
                f"{p}.fc2.weight": layer.ffn[3].weight, f"{p}.fc2.bias": layer.ffn[3].bias}
    if shape.pre_norm:
        out |= _hf_norm("model.encoder.layer_norm", enc.final_norm)
        out |= _hf_norm("model.decoder.layer_norm", dec.final_norm)
    if shape.shared_embeddings:
        out["model.shared.weight"] = enc.embed.weight
    out["model.encoder.embed_tokens.weight"] = enc.embed.weight
    out["model.decoder.embed_tokens.weight"] = dec.embed.weight
    out["lm_head.weight"] = model.output_layer.weight
    return {k: v.detach().float().cpu().clone() for k, v in out.items()}


def huggingface_config(shape: Shape):
    """MarianConfig (post-norm) or PegasusConfig (pre-norm) of the same shape and special ids."""
    import transformers

    common = dict(
        d_model=shape.dim, encoder_layers=shape.encoder_layers, decoder_layers=shape.decoder_layers,
        encoder_attention_heads=shape.encoder_heads, decoder_attention_heads=shape.decoder_heads,
        encoder_ffn_dim=shape.encoder_ffn, decoder_ffn_dim=shape.decoder_ffn, activation_function="relu",
        dropout=0.1, attention_dropout=0.0, activation_dropout=0.0, max_position_embeddings=shape.max_positions,
        scale_embedding=True, pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS, decoder_start_token_id=BOS,
        forced_eos_token_id=EOS, is_encoder_decoder=True, tie_word_embeddings=shape.tied_output,
    )
    if shape.pre_norm:
        if not shape.shared_embeddings:
            raise ValueError("a pre-norm model exports as Pegasus, which has one embedding matrix for source and "
                             "target: train it with model.share_embeddings=true (a joint vocabulary), or post-norm "
                             "(model.encoder.pre_norm=false model.decoder.pre_norm=false: Marian takes two)")
        return transformers.PegasusConfig(vocab_size=shape.src_vocab, **common)
    return transformers.MarianConfig(vocab_size=shape.src_vocab, decoder_vocab_size=shape.tgt_vocab,
                                     share_encoder_decoder_embeddings=shape.shared_embeddings, **common)


def huggingface_generation_config(generation, max_positions: int):
    """The run's decoding settings as HF GenerationConfig (what HF can express of them)."""
    from transformers import GenerationConfig

    # ours: at most min(max_len, max_positions - 1) tokens and EOS; HF counts the start token too
    most = min(generation.max_len if generation else 512, max_positions - 1)
    settings = dict(decoder_start_token_id=BOS, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD,
                    forced_eos_token_id=EOS, suppress_tokens=[PAD, BOS], max_length=most + 2,
                    min_new_tokens=generation.min_len if generation else 1, num_beams=1, do_sample=False)
    if generation is not None:
        if generation.strategy == "beam":
            settings |= dict(num_beams=generation.beam_size, length_penalty=generation.len_penalty,
                             early_stopping=True, num_return_sequences=generation.nbest)
        elif generation.strategy == "sampling":
            settings |= dict(do_sample=True, temperature=generation.temperature, top_k=generation.top_k,
                             top_p=generation.top_p)
        if generation.no_repeat_ngram_size:
            settings["no_repeat_ngram_size"] = generation.no_repeat_ngram_size
    return GenerationConfig(**settings)


def huggingface_model(model):
    """An in-memory MarianMTModel / PegasusForConditionalGeneration with the model's weights (eval mode)."""
    import torch
    import transformers

    shape = exportable_shape(model)
    config = huggingface_config(shape)
    cls = transformers.PegasusForConditionalGeneration if shape.pre_norm else transformers.MarianMTModel
    torch_state = torch.random.get_rng_state()
    hf = cls(config)
    torch.random.set_rng_state(torch_state)  # building it must not change the caller's random numbers
    weights = huggingface_weights(model, shape)
    own = hf.state_dict()
    unknown = sorted(set(weights) - set(own))
    if unknown:
        raise RuntimeError(f"{cls.__name__} has no parameters {unknown[:3]} (another transformers version?)")
    computed = {k for k in own if "embed_positions" in k or k == "final_logits_bias"}
    missing = sorted(set(own) - set(weights) - computed)
    if missing:
        raise RuntimeError(f"no weights for {cls.__name__}'s {missing[:3]} (another transformers version?)")
    with torch.no_grad():
        for name, tensor in weights.items():
            target = own[name]
            if target.shape != tensor.shape:
                raise RuntimeError(f"{name}: {tuple(tensor.shape)} does not fit {cls.__name__}'s {tuple(target.shape)}")
            target.copy_(tensor)
        if "final_logits_bias" in own:
            own["final_logits_bias"].zero_()
    return hf.eval()


def export_huggingface(model, tokenizer, folder: Path, generation=None) -> Path:
    """Write the model, a MarianTokenizer and generation_config.json into folder."""
    from transformers.utils import logging as hf_logging

    hf = huggingface_model(model)
    hf.generation_config = huggingface_generation_config(generation, model.max_positions)
    folder.mkdir(parents=True, exist_ok=True)
    hf_logging.disable_progress_bar()  # no progress bar for a file or two
    hf.save_pretrained(folder)
    _write_marian_tokenizer(tokenizer, folder, model.max_positions)
    return folder


def _vocabulary(processor) -> list[str]:
    return [processor.id_to_piece(i) for i in range(processor.get_piece_size())]


def _write_marian_tokenizer(tokenizer, folder: Path, max_positions: int) -> None:
    shutil.copyfile(tokenizer.src_model_path, folder / "source.spm")
    shutil.copyfile(tokenizer.tgt_model_path, folder / "target.spm")

    def write_json(name: str, data: dict) -> None:
        (folder / name).write_text(json.dumps(data, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")

    write_json("vocab.json", {piece: i for i, piece in enumerate(_vocabulary(tokenizer.src))})
    if not tokenizer.joint:
        write_json("target_vocab.json", {piece: i for i, piece in enumerate(_vocabulary(tokenizer.tgt))})
    write_json("tokenizer_config.json", {
        "tokenizer_class": "MarianTokenizer", "separate_vocabs": not tokenizer.joint,
        "model_max_length": max_positions - 1,
        "unk_token": "<unk>", "eos_token": "</s>", "pad_token": "<pad>"})


# ---------------------------------------------------------------- CTranslate2

def ctranslate2_spec(model, tokenizer):
    """A ctranslate2.specs.TransformerSpec holding the model's weights and vocabularies."""
    import numpy as np
    from ctranslate2.specs import common_spec, transformer_spec

    shape = exportable_shape(model)
    relu = common_spec.Activation.RELU
    spec = transformer_spec.TransformerSpec(
        transformer_spec.TransformerEncoderSpec(shape.encoder_layers, shape.encoder_heads, pre_norm=shape.pre_norm,
                                                activation=relu),
        transformer_spec.TransformerDecoderSpec(shape.decoder_layers, shape.decoder_heads, pre_norm=shape.pre_norm,
                                                activation=relu))
    array = lambda t: t.detach().float().cpu().numpy().copy()  # noqa: E731

    def linear(target, weight, bias):
        target.weight, target.bias = array(weight), array(bias)

    def norm(target, module):
        target.gamma, target.beta = array(module.weight), array(module.bias)

    def ffn(target, layer, last_norm):
        norm(target.layer_norm, last_norm)
        linear(target.linear_0, layer.ffn[0].weight, layer.ffn[0].bias)
        linear(target.linear_1, layer.ffn[3].weight, layer.ffn[3].bias)

    def inputs(target, module, embeddings):
        embeddings.weight = array(module.embed.weight)
        target.scale_embeddings = True  # times sqrt(dim), like TokenEmbedding
        target.position_encodings.encodings = array(module.positions.table)

    enc, dec = model.encoder, model.decoder
    inputs(spec.encoder, enc, spec.encoder.embeddings[0])
    for target, layer in zip(spec.encoder.layer, enc.layers):
        attn = target.self_attention
        linear(attn.linear[0], layer.self_attn.qkv_proj.weight, layer.self_attn.qkv_proj.bias)
        linear(attn.linear[1], layer.self_attn.out_proj.weight, layer.self_attn.out_proj.bias)
        norm(attn.layer_norm, layer.norm1)
        ffn(target.ffn, layer, layer.norm2)
    inputs(spec.decoder, dec, spec.decoder.embeddings)
    for target, layer in zip(spec.decoder.layer, dec.layers):
        attn = target.self_attention
        linear(attn.linear[0], layer.self_attn.qkv_proj.weight, layer.self_attn.qkv_proj.bias)
        linear(attn.linear[1], layer.self_attn.out_proj.weight, layer.self_attn.out_proj.bias)
        norm(attn.layer_norm, layer.norm1)
        cross = target.attention
        linear(cross.linear[0], layer.cross_attn.q_proj.weight, layer.cross_attn.q_proj.bias)
        linear(cross.linear[1], layer.cross_attn.kv_proj.weight, layer.cross_attn.kv_proj.bias)
        linear(cross.linear[2], layer.cross_attn.out_proj.weight, layer.cross_attn.out_proj.bias)
        norm(cross.layer_norm, layer.norm2)
        ffn(target.ffn, layer, layer.norm3)
    if shape.pre_norm:
        norm(spec.encoder.layer_norm, enc.final_norm)
        norm(spec.decoder.layer_norm, dec.final_norm)
    spec.decoder.projection.weight = array(model.output_layer.weight)
    spec.decoder.projection.bias = np.zeros(shape.tgt_vocab, dtype=np.float32)
    spec.register_source_vocabulary(_ct2_vocabulary(tokenizer.src))
    spec.register_target_vocabulary(_ct2_vocabulary(tokenizer.tgt))
    spec.config.unk_token, spec.config.bos_token, spec.config.eos_token = "<unk>", "<s>", "</s>"
    spec.config.decoder_start_token = "<s>"
    spec.config.add_source_eos = True  # like this project: the source ends with EOS, no BOS
    spec.config.layer_norm_epsilon = 1e-5
    return spec


def _ct2_vocabulary(processor) -> list[str]:
    pieces = _vocabulary(processor)
    expected = {PAD: "<pad>", UNK: "<unk>", BOS: "<s>", EOS: "</s>"}
    for i, piece in expected.items():
        if pieces[i] != piece:
            raise ValueError(f"the SentencePiece model has {pieces[i]!r} at id {i}, not {piece!r}")
    return pieces


def export_ctranslate2(model, tokenizer, folder: Path) -> Path:
    """Write a float32 CTranslate2 model into folder (compute_type quantizes it when it is loaded)."""
    from ctranslate2.converters.converter import Converter

    spec = ctranslate2_spec(model, tokenizer)

    class _Converter(Converter):
        def _load(self):
            return spec

    _Converter().convert(str(folder), force=True)
    return folder


# ---------------------------------------------------------------- seq2seq-decode backend=ctranslate2

CT2_CACHE = "exports"  # <run>/exports/ctranslate2-<checkpoint name>/: what backend=ctranslate2 decodes with
CT2_STAMP = "source.json"


def _candidate_checkpoint(run: Path, checkpoint: str) -> Path:
    named = run / "checkpoints" / f"{checkpoint}.pt"
    return named if named.is_file() else Path(checkpoint)


def _stamp(path: Path) -> dict:
    stat = path.stat()
    return {"checkpoint": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def ctranslate2_cache(run: str | Path, checkpoint: str = "best") -> Path:
    """The run's checkpoint as a CTranslate2 model folder in <run>/exports/, exported when it is missing or
    the checkpoint changed since (size or modification time), under a lock (several decoders may start at once)."""
    from seq2seq.data.cachefiles import cache_lock, remove_stale_temps, temp_path
    from seq2seq.decode import load_run

    run = Path(run)
    if not run.is_dir():
        raise FileNotFoundError(f"run folder not found: {run}")
    candidate = _candidate_checkpoint(run, checkpoint)
    folder = run / CT2_CACHE / f"ctranslate2-{candidate.stem}"
    with cache_lock(folder.with_name(folder.name + ".lock"), f"exporting {candidate} to CTranslate2"):
        stamp_file = folder / CT2_STAMP
        if candidate.is_file() and stamp_file.is_file():
            try:
                if json.loads(stamp_file.read_text(encoding="utf-8")) == _stamp(candidate):
                    return folder
            except ValueError:
                pass
        model, tokenizer, path = load_run(run, checkpoint)
        log.info("exporting %s to CTranslate2 in %s (once per checkpoint)", path, folder)
        remove_stale_temps(folder.parent, folder.name)
        tmp = temp_path(folder)
        try:
            export_ctranslate2(model, tokenizer, tmp)
            copy_tokenizer(tokenizer, tmp)
            describe(tmp, "ctranslate2", path, model, tokenizer)
            (tmp / CT2_STAMP).write_text(json.dumps(_stamp(path)) + "\n", encoding="utf-8")
            if folder.exists():
                shutil.rmtree(folder)
            tmp.rename(folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def check_ctranslate2_options(opts, need_attention: bool) -> None:
    """Refuse what the CTranslate2 backend cannot do as this project does it."""
    require("ctranslate2", "backend=ctranslate2")
    if need_attention:
        raise ValueError("backend=ctranslate2 reports no attention: drop attention=... and "
                         "generation.print_alignment=true, or decode with backend=torch")
    if opts.coverage_penalty:
        raise ValueError("backend=ctranslate2 has no coverage penalty as this project defines it: set "
                         "generation.coverage_penalty=0 or decode with backend=torch")
    if opts.repetition_penalty != 1.0:
        raise ValueError("CTranslate2's repetition penalty works on logits, not on log-probabilities as "
                         "generation.repetition_penalty does: set it to 1.0 or decode with backend=torch")


def decode_ctranslate2(folder: Path, src_ids: list[list[int]], opts, *, device, compute_type: str = "default",
                       threads: int = 0, batch_tokens: int = 6000, progress=None):
    """Hypotheses (best first, seq2seq.generation.search.Hypothesis without attention) of every source, in input
    order, decoded by CTranslate2 with the folder's model. Length limits are this project's (per sentence, from
    its source length: sentences of one source length are decoded together); scores are CTranslate2's."""
    import ctranslate2
    import torch

    from seq2seq.data.batching import pad_source
    from seq2seq.data.tokenizer import Tokenizer
    from seq2seq.generation.search import Hypothesis, length_bounds

    tokenizer = Tokenizer.load(folder / TOKENIZER_FOLDER)
    max_positions = json.loads((folder / "export.json").read_text(encoding="utf-8"))["max_positions"]
    device = torch.device(device)
    translator = ctranslate2.Translator(str(folder), device=device.type, device_index=device.index or 0,
                                        compute_type=compute_type, intra_threads=max(threads, 0))
    target_ids = {piece: i for i, piece in enumerate(_vocabulary(tokenizer.tgt))}
    search = dict(beam_size=1, num_hypotheses=1, sampling_topk=1)
    if opts.strategy == "beam":
        search = dict(beam_size=opts.beam_size, num_hypotheses=opts.nbest, length_penalty=opts.len_penalty)
    elif opts.strategy == "sampling":
        search = dict(beam_size=1, num_hypotheses=opts.nbest, sampling_topk=opts.top_k, sampling_topp=opts.top_p,
                      sampling_temperature=opts.temperature)
    limit = max_positions - 1  # room for EOS
    results = [None] * len(src_ids)
    by_length: dict[int, list[int]] = {}
    for i, ids in enumerate(src_ids):
        if not ids:
            results[i] = [Hypothesis([], 0.0, 0.0)]
        else:
            by_length.setdefault(min(len(ids), limit), []).append(i)
    for length, rows in sorted(by_length.items()):
        least, most = (int(x[0]) for x in length_bounds(pad_source([[UNK] * length]), opts, max_positions))
        outputs = translator.translate_batch(
            [tokenizer.src_pieces(src_ids[i][:limit]) for i in rows], max_batch_size=max(batch_tokens, length + 1),
            batch_type="tokens", max_decoding_length=most, min_decoding_length=least, return_scores=True,
            no_repeat_ngram_size=opts.no_repeat_ngram_size, suppress_sequences=[["<pad>"], ["<s>"]], **search)
        for i, out in zip(rows, outputs):
            hyps = []
            for pieces, score in zip(out.hypotheses, out.scores):
                tokens = [target_ids[p] for p in pieces if p != "</s>"]
                hyps.append(Hypothesis(tokens, score, score))
            results[i] = hyps
        if progress is not None:
            progress.update(len(rows))
    return results


# ---------------------------------------------------------------- the command

def copy_tokenizer(tokenizer, folder: Path) -> None:
    tokenizer.save(folder / TOKENIZER_FOLDER)


def describe(folder: Path, fmt: str, checkpoint: Path, model, tokenizer) -> None:
    shape = exportable_shape(model)
    info = {
        "format": fmt, "checkpoint": str(checkpoint),
        "architecture": ("PegasusForConditionalGeneration" if shape.pre_norm else "MarianMTModel")
        if fmt == "huggingface" else "ctranslate2.specs.TransformerSpec",
        "ids": {"pad": PAD, "unk": UNK, "bos": BOS, "eos": EOS, "decoder_start": BOS},
        "source": "SentencePiece pieces of the text, then EOS (no BOS)",
        "tokenizer": f"{TOKENIZER_FOLDER}/ (seq2seq.data.tokenizer.Tokenizer.load)",
        "newline_piece": tokenizer.newline_piece, "byte_fallback": tokenizer.byte_fallback,
        "pre_norm": shape.pre_norm, "max_positions": shape.max_positions,
    }
    (folder / "export.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


def export_run(run: str | Path, fmt: str, output: str | Path, checkpoint: str = "best") -> Path:
    """Export a run's checkpoint into the folder output (created; replaced files are overwritten)."""
    from seq2seq.decode import load_run

    if fmt not in FORMATS:
        raise ValueError(f"format={fmt}: choose one of {', '.join(FORMATS)}")
    require("transformers" if fmt == "huggingface" else "ctranslate2", f"format={fmt}")
    model, tokenizer, path = load_run(run, checkpoint)
    exportable_shape(model)
    folder = Path(output)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"output={folder} exists and is not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    if fmt == "huggingface":
        export_huggingface(model, tokenizer, folder, saved_generation(run))
    else:
        export_ctranslate2(model, tokenizer, folder)
    copy_tokenizer(tokenizer, folder)
    describe(folder, fmt, path, model, tokenizer)
    log.info("exported %s as %s into %s", path, fmt, folder)
    return folder


def saved_generation(run):
    """The run's decoding settings (config.yaml's generation) as GenerationOptions, None without them."""
    from dataclasses import fields

    from omegaconf import OmegaConf

    from seq2seq.generation.search import GenerationOptions

    file = Path(run) / "config.yaml"
    if not file.is_file():
        return None
    saved = OmegaConf.to_container(OmegaConf.load(file)).get("generation") or {}
    known = {f.name for f in fields(GenerationOptions)}
    return GenerationOptions(**{k: v for k, v in saved.items() if k in known})


COMMAND = Command("export")  # one-line error reports and exit codes: seq2seq.cli


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="export")
@COMMAND.task
def _hydra_main(cfg: DictConfig) -> None:
    setup_logging()
    export_run(cfg.run, cfg.format, cfg.output, cfg.checkpoint)


def main() -> None:
    COMMAND.run(_hydra_main)


if __name__ == "__main__":
    main()
