"""format=ctranslate2: a Transformer as a CTranslate2 model folder (model.bin, config.json, vocabularies) built
with ctranslate2.specs; CTranslate2 appends EOS to the source itself and starts the target with <s>."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from seq2seq.data.tokenizer import BOS, EOS, PAD, UNK
from seq2seq.export.shapes import exportable_shape, vocabulary

def ctranslate2_spec(model, tokenizer):
    # long: one weight-by-weight mapping onto CTranslate2's spec, read top to bottom against its layout
    """A ctranslate2.specs.TransformerSpec holding the model's weights and vocabularies."""
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
        linear(target.linear_0, layer.ffn.up.weight, layer.ffn.up.bias)
        linear(target.linear_1, layer.ffn.down.weight, layer.ffn.down.bias)

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
    pieces = vocabulary(processor)
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
