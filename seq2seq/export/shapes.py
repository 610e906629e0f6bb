"""What an exported model must reproduce of a Transformer EncoderDecoder (its Shape, or why it cannot be
exported), and what every export folder holds beside the weights: the tokenizer and export.json."""
from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

from seq2seq.data.tokenizer import BOS, EOS, PAD, UNK
from seq2seq.models.output import OutputLayer
from seq2seq.models.transformer import TransformerDecoder, TransformerEncoder

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
    if importlib.util.find_spec(module) is None:
        raise ValueError(f"{what} needs the Python package {module}: pip install 'seq2seq[export]' "
                         f"(or pip install -e '.[export]' in a checkout)")


def exportable_shape(model) -> Shape:
    """The model's Shape, or a ValueError saying why it cannot be exported."""
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
                 encoder_ffn=enc.layers[0].ffn.up.out_features, decoder_ffn=dec.layers[0].ffn.up.out_features,
                 pre_norm=pre_norm, shared_embeddings=enc.embed is dec.embed, tied_output=tied,
                 max_positions=model.max_positions, src_vocab=enc.embed.num_embeddings,
                 tgt_vocab=dec.embed.num_embeddings)


def vocabulary(processor) -> list[str]:
    return [processor.id_to_piece(i) for i in range(processor.get_piece_size())]


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
