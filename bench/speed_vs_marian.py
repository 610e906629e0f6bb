"""Training and beam-search speed of seq2seq against Hugging Face Marian, side by side, same process.

Both models have the same shape (d=256, 3+3 layers, 4 heads, FFN 1024, ReLU, 8k joint
vocabulary, tied embeddings: about 7.6M parameters), see the same Multi30k batches and
run on the same threads. Training counts target tokens per second over the same batches
(label smoothing 0.1, AdamW). Decoding runs beam 5 over the same length-sorted batches of
test_2016_flickr with the output length pinned (min = max = L new tokens), so both do
the same number of steps whatever the weights.

    SEQ2SEQ_DATA=../shared/data python bench/speed_vs_marian.py [--steps 30] [--sentences 300]

Needs `pip install transformers` (not a dependency of the package).
"""
from __future__ import annotations

import argparse
import os
import time

import torch
import torch.nn.functional as F

from seq2seq.data.batching import bucket_batches, collate, pad_source
from seq2seq.data.corpus import read_lines
from seq2seq.data.prepare import prepare_data
from seq2seq.data.tokenizer import BOS, EOS, PAD
from seq2seq.generation.search import GenerationOptions, generate
from seq2seq.models.model import build_model

DIM, LAYERS, HEADS, FFN = 256, 3, 4, 1024


def ours(vocab: int):
    layer = {"layers": LAYERS, "heads": HEADS, "ffn_dim": FFN, "dropout": 0.1}
    cfg = {"embed_dim": DIM, "dropout": 0.1, "max_positions": 256, "share_embeddings": True, "tie_output": True,
           "encoder": {"_target_": "seq2seq.models.transformer.TransformerEncoder", **layer},
           "decoder": {"_target_": "seq2seq.models.transformer.TransformerDecoder", **layer},
           "attention": {"_target_": "seq2seq.models.attention.MultiHeadAttention", "heads": HEADS}}
    return build_model(cfg, vocab, vocab)


def marian(vocab: int):
    from transformers import MarianConfig, MarianMTModel

    cfg = MarianConfig(vocab_size=vocab, decoder_vocab_size=vocab, d_model=DIM, encoder_layers=LAYERS,
                       decoder_layers=LAYERS, encoder_attention_heads=HEADS, decoder_attention_heads=HEADS,
                       encoder_ffn_dim=FFN, decoder_ffn_dim=FFN, activation_function="relu", dropout=0.1,
                       max_position_embeddings=256, pad_token_id=PAD, eos_token_id=EOS, bos_token_id=BOS,
                       decoder_start_token_id=BOS, forced_eos_token_id=None, scale_embedding=True,
                       share_encoder_decoder_embeddings=True, tie_word_embeddings=True)
    return MarianMTModel(cfg)


def train_speed(step_fn, params, batches) -> float:
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    step_fn(batches[0])  # warm-up
    optimizer.zero_grad(set_to_none=True)
    tokens, start = 0, time.perf_counter()
    for batch in batches[1:]:
        loss = step_fn(batch)
        (loss / batch.ntokens).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += batch.ntokens
    return tokens / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.environ.get("SEQ2SEQ_DATA"), help="folder holding multi30k/")
    parser.add_argument("--steps", type=int, default=30, help="training steps per model")
    parser.add_argument("--batch-tokens", type=int, default=3072)
    parser.add_argument("--sentences", type=int, default=300, help="test sentences to decode")
    parser.add_argument("--length", type=int, default=20, help="pinned output length for decoding")
    parser.add_argument("--cache", default="outputs/cache")
    args = parser.parse_args()
    if not args.data:
        parser.error("set SEQ2SEQ_DATA or --data to the folder that holds multi30k/")
    torch.manual_seed(0)
    data = prepare_data({"root": args.data, "path": "multi30k", "format": "text", "src": "en", "tgt": "de",
                         "splits": {"train": "train", "valid": "val"}, "cache_dir": args.cache},
                        {"model_type": "unigram", "vocab_size": 8000, "joint": True, "character_coverage": 1.0,
                         "max_sentences": 2_000_000})
    vocab = data.tokenizer.src_vocab_size
    train = data.train
    order = bucket_batches([len(s) + 1 for s in train.src], [len(t) + 1 for t in train.tgt], args.batch_tokens,
                           shuffle=True, seed=1)[: args.steps + 1]
    batches = [collate([train.src[i] for i in b], [train.tgt[i] for i in b]) for b in order]
    a, b = ours(vocab), marian(vocab)
    print(f"threads {torch.get_num_threads()} | parameters: seq2seq {sum(p.numel() for p in a.parameters())/1e6:.2f}M, "
          f"Marian {sum(p.numel() for p in b.parameters())/1e6:.2f}M")

    def ours_step(batch):
        return a(batch.src, batch.prev_tokens, batch.target, 0.1).loss

    def marian_step(batch):
        logits = b(input_ids=batch.src, attention_mask=batch.src.ne(PAD), decoder_input_ids=batch.prev_tokens,
                   decoder_attention_mask=batch.prev_tokens.ne(PAD)).logits
        mask = batch.target.ne(PAD)
        return F.cross_entropy(logits[mask], batch.target[mask], reduction="sum", label_smoothing=0.1)

    a.train(), b.train()
    ours_tps = train_speed(ours_step, a.parameters(), batches)
    marian_tps = train_speed(marian_step, b.parameters(), batches)
    print(f"training  | seq2seq {ours_tps:8.0f} target tokens/s | Marian {marian_tps:8.0f} | "
          f"ratio {ours_tps / marian_tps:.2f}x")

    lines = read_lines(os.path.join(args.data, "multi30k", "test_2016_flickr.en"))[: args.sentences]
    ids = sorted(data.tokenizer.encode_src(lines), key=len)
    chunks = [ids[i : i + 100] for i in range(0, len(ids), 100)]
    a.eval(), b.eval()
    opts = GenerationOptions(beam_size=5, min_len=args.length, max_len_a=0.0, max_len_b=args.length)
    with torch.no_grad():
        start = time.perf_counter()
        for chunk in chunks:
            generate(a, pad_source(chunk), opts)
        ours_sps = len(ids) / (time.perf_counter() - start)
        start = time.perf_counter()
        for chunk in chunks:
            src = pad_source(chunk)
            b.generate(input_ids=src, attention_mask=src.ne(PAD), num_beams=5, max_new_tokens=args.length,
                       min_new_tokens=args.length, do_sample=False)
        marian_sps = len(ids) / (time.perf_counter() - start)
    print(f"beam 5    | seq2seq {ours_sps:8.1f} sentences/s    | Marian {marian_sps:8.1f} | "
          f"ratio {ours_sps / marian_sps:.2f}x  ({len(ids)} sentences, {args.length} tokens each)")


if __name__ == "__main__":
    main()
