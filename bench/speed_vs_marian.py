"""Training and beam-search speed of seq2seq against Hugging Face Marian, side by side, same process.

Both models have the same shape (d=256, 3+3 layers, 4 heads, FFN 1024, ReLU, 8k joint
vocabulary, tied embeddings: about 7.6M parameters; this project's layers are pre-norm as in
the recipe, Marian's post-norm), see the same Multi30k batches (the recipe's 2,048 tokens) and
run on the same threads. Training: each model is built once with its own fused AdamW (same settings)
and trained in alternating rounds of --steps steps (the order flips every round); the table
gives the median over rounds of target tokens/s and of source + target tokens/s. Peak resident
memory is measured for each side alone in a child process (spawned, the same imports, the same
steps), since one process's peak covers both. Decoding runs beam 5 over the same length-sorted
batches of test_2016_flickr with the output length pinned (min = max = L new tokens), so both do
the same number of steps whatever the weights.

    SEQ2SEQ_DATA=../shared/data python bench/speed_vs_marian.py [--rounds 3] [--steps 20] [--sentences 300] \
        [--precision fp32|bf16]

Needs `pip install transformers` (not a dependency of the package).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F

from seq2seq.data.batching import bucket_batches, pad_source
from seq2seq.data.corpus import read_lines
from seq2seq.data.pairs import filter_training_pairs
from seq2seq.data.prepare import prepare_data
from seq2seq.data.tokenizer import BOS, EOS, PAD
from seq2seq.generation.options import GenerationOptions
from seq2seq.generation.search import generate
from seq2seq.models.kernels import attention as attention_kernels
from seq2seq.models.kernels import gemm
from seq2seq.training.options import PRECISIONS
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


def ours_loss(model, batch):
    return model(batch.src, batch.prev_tokens, batch.target, label_smoothing=0.1).loss


def marian_loss(model, batch):
    """A plain loop's loss: the full logits, then label-smoothed cross-entropy on the non-pad positions."""
    logits = model(input_ids=batch.src, attention_mask=batch.src.ne(PAD), decoder_input_ids=batch.prev_tokens,
                   decoder_attention_mask=batch.prev_tokens.ne(PAD)).logits
    mask = batch.target.ne(PAD)
    return F.cross_entropy(logits[mask], batch.target[mask], reduction="sum", label_smoothing=0.1)


SIDES = {"seq2seq": (ours, ours_loss), "Marian": (marian, marian_loss)}
KERNELS = ["auto", "auto"]  # --kernels, --attention
AUTOCAST = [None]  # --precision: the autocast dtype of both sides' forward and loss (None: fp32)


class Side:
    """One model of the comparison with its AdamW (the same settings for both); `run` times a list of batches."""

    def __init__(self, name: str, vocab: int):
        build, self.loss = SIDES[name]
        torch.manual_seed(0)
        self.name, self.model = name, build(vocab).train()
        if name == "seq2seq":  # what seq2seq-train does with kernels.* (Marian keeps torch's nn.Linear and SDPA)
            print(f"seq2seq kernels.linear={KERNELS[0]}: "
                  f"{gemm.configure(KERNELS[0], 16, self.model, rows=(256, 32), cache_dir=None)}")
            print(f"seq2seq kernels.attention={KERNELS[1]}: "
                  f"{attention_kernels.configure(KERNELS[1], self.model, 2048, cache_dir=None)}")
        # fused: what seq2seq-train takes and Hugging Face's Trainer's default (adamw_torch_fused, torch >= 2.8)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4, betas=(0.9, 0.98), weight_decay=1e-4,
                                           fused=True)

    def run(self, batches) -> float:
        start = time.perf_counter()
        for batch in batches:
            with torch.autocast("cpu", dtype=AUTOCAST[0], enabled=AUTOCAST[0] is not None):
                loss = self.loss(self.model, batch) / batch.ntokens
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start


def load(args):
    data = prepare_data({"root": args.data, "path": "multi30k", "format": "text", "src": "en", "tgt": "de",
                         "splits": {"train": "train", "valid": "val"}, "cache_dir": args.cache, "long_pairs": "drop",
                         "workers": None},
                        {"model_type": "unigram", "vocab_size": 8000, "joint": True, "character_coverage": 1.0,
                         "max_sentences": 2_000_000, "newline_piece": None, "byte_fallback": False, "threads": 2})
    train = filter_training_pairs(data.train, 256, 256)
    src_lens, tgt_lens = train.lengths()
    order = bucket_batches(src_lens, tgt_lens, args.batch_tokens, shuffle=True, seed=1)
    need = 1 + args.rounds * args.steps
    batches = [train.collate(b) for b in order[:need]]
    return data, batches


def peak_rss_child(name: str, args, queue) -> None:
    """In a fresh process: the same imports and data, then one model trained on the same steps.

    Reports the resident memory before the model is built and the peak while it trains (MiB): the
    kernel's high-water mark is reset after loading (/proc/self/clear_refs), so loading does not hide it."""
    import importlib

    importlib.import_module("transformers")  # both children import the same modules
    KERNELS[:] = [args.kernels, args.attention]
    AUTOCAST[0] = PRECISIONS[args.precision]
    torch.set_num_threads(args.threads)
    data, batches = load(args)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    before = _status_mib("VmRSS")
    Side(name, data.tokenizer.src_vocab_size).run(batches[: 1 + args.steps])
    queue.put((before, _status_mib("VmHWM")))


def _status_mib(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def peak_rss(name: str, args) -> tuple[float, float]:
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=peak_rss_child, args=(name, args, queue))
    child.start()
    value = queue.get()
    child.join()
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.environ.get("SEQ2SEQ_DATA"), help="folder holding multi30k/")
    parser.add_argument("--rounds", type=int, default=3, help="alternating training rounds (medians reported)")
    parser.add_argument("--steps", type=int, default=20, help="training steps per model per round")
    parser.add_argument("--batch-tokens", type=int, default=2048, help="padded tokens per batch (the recipe's)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sentences", type=int, default=300, help="test sentences to decode (0: skip decoding)")
    parser.add_argument("--length", type=int, default=20, help="pinned output length for decoding")
    parser.add_argument("--no-rss", action="store_true", help="skip the peak-memory children")
    parser.add_argument("--cache", default="outputs/cache")
    parser.add_argument("--kernels", default="auto", choices=gemm.CHOICES, help="seq2seq's kernels.linear")
    parser.add_argument("--attention", default="auto", choices=attention_kernels.CHOICES,
                        help="seq2seq's kernels.attention")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                        help="training autocast of both sides, as trainer.precision=bf16 does (decoding stays fp32)")
    args = parser.parse_args()
    KERNELS[:] = [args.kernels, args.attention]
    AUTOCAST[0] = PRECISIONS[args.precision]
    if not args.data:
        parser.error("set SEQ2SEQ_DATA or --data to the folder that holds multi30k/")
    if args.rounds < 1 or args.steps < 1:
        parser.error("--rounds and --steps must be >= 1")
    torch.set_num_threads(args.threads)
    data, batches = load(args)
    vocab = data.tokenizer.src_vocab_size
    sides = [Side(name, vocab) for name in SIDES]
    print(f"threads {torch.get_num_threads()} | training precision {args.precision} on both sides | parameters: "
          + ", ".join(f"{t.name} {sum(p.numel() for p in t.model.parameters()) / 1e6:.2f}M" for t in sides))
    for side in sides:
        side.run(batches[:1])  # warm-up
    rounds = [batches[1 + r * args.steps : 1 + (r + 1) * args.steps] for r in range(args.rounds)]
    tgt = [sum(b.ntokens for b in chunk) for chunk in rounds]
    both = [sum(b.ntokens + int(b.src.ne(PAD).sum()) for b in chunk) for chunk in rounds]
    seconds = {side.name: [] for side in sides}
    for r, chunk in enumerate(rounds):
        for side in sides if r % 2 == 0 else sides[::-1]:
            seconds[side.name].append(side.run(chunk))
    rss = {} if args.no_rss else {side.name: peak_rss(side.name, args) for side in sides}
    print(f"{'training':10s} | {'target tok/s':>12s} | {'src+tgt tok/s':>13s} | {'per round (target tok/s)':>30s} | "
          "RSS before the model -> peak while training")
    rate = {}
    for side in sides:
        per_round = [t / s for t, s in zip(tgt, seconds[side.name])]
        rate[side.name] = statistics.median(per_round)
        both_rate = statistics.median(t / s for t, s in zip(both, seconds[side.name]))
        memory = f"{rss[side.name][0]:.0f} -> {rss[side.name][1]:.0f} MiB" if rss else "-"
        print(f"{side.name:10s} | {rate[side.name]:12.0f} | {both_rate:13.0f} | "
              f"{' '.join(f'{v:.0f}' for v in per_round):>30s} | {memory}")
    summary = [f"training seq2seq/Marian {rate['seq2seq'] / rate['Marian']:.2f}x target tokens/s"]
    if rss:
        summary.append(f"peak RSS while training seq2seq/Marian {rss['seq2seq'][1] / rss['Marian'][1]:.2f}x")

    if args.sentences:
        a, b = sides[0].model.eval(), sides[1].model.eval()
        lines = read_lines(os.path.join(args.data, "multi30k", "test_2016_flickr.en"))[: args.sentences]
        ids = sorted(data.tokenizer.encode_src(lines), key=len)
        chunks = [ids[i : i + 100] for i in range(0, len(ids), 100)]
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
              f"({len(ids)} sentences, {args.length} tokens each, untrained weights)")
        summary.append(f"beam 5 (pinned length) {ours_sps / marian_sps:.2f}x")
    print("ratios: " + "; ".join(summary))


if __name__ == "__main__":
    main()
