"""format=huggingface: a Transformer as MarianMTModel (post-norm) or PegasusForConditionalGeneration
(pre-norm), with a MarianTokenizer and the run's decoding settings in generation_config.json."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from seq2seq.data.tokenizer import BOS, EOS, PAD
from seq2seq.export.shapes import Shape, exportable_shape, vocabulary

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
        out |= {f"{p}.fc1.weight": layer.ffn.up.weight, f"{p}.fc1.bias": layer.ffn.up.bias,
                f"{p}.fc2.weight": layer.ffn.down.weight, f"{p}.fc2.bias": layer.ffn.down.bias}
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
        out |= {f"{p}.fc1.weight": layer.ffn.up.weight, f"{p}.fc1.bias": layer.ffn.up.bias,
                f"{p}.fc2.weight": layer.ffn.down.weight, f"{p}.fc2.bias": layer.ffn.down.bias}
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


def _write_marian_tokenizer(tokenizer, folder: Path, max_positions: int) -> None:
    shutil.copyfile(tokenizer.src_model_path, folder / "source.spm")
    shutil.copyfile(tokenizer.tgt_model_path, folder / "target.spm")

    def write_json(name: str, data: dict) -> None:
        (folder / name).write_text(json.dumps(data, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")

    write_json("vocab.json", {piece: i for i, piece in enumerate(vocabulary(tokenizer.src))})
    if not tokenizer.joint:
        write_json("target_vocab.json", {piece: i for i, piece in enumerate(vocabulary(tokenizer.tgt))})
    write_json("tokenizer_config.json", {
        "tokenizer_class": "MarianTokenizer", "separate_vocabs": not tokenizer.joint,
        "model_max_length": max_positions - 1,
        "unk_token": "<unk>", "eos_token": "</s>", "pad_token": "<pad>"})
