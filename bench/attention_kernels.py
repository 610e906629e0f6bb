"""The Transformer's attention on its two CPU routes: torch's fused kernel (F.scaled_dot_product_attention)
against the written-out products and softmax (seq2seq/models/kernels/attention.py), and what
kernels.attention=auto picks on this host.

1. Per key length, at the Multi30k Transformer's shape (4 heads of 64) and the recipe's 2,048 tokens a
   batch: training (forward and backward of masked self-attention) and a decoding step (5 queries of 64
   sentences, no gradient), milliseconds, median of alternating rounds.
2. auto's calibration on this host (timed; not cached here) and the plan it gives.
3. End to end, with --data: the recipe's model (d 256, 3+3 layers, 8k joint vocabulary) trained on real
   Multi30k batches with seq2seq's AdamW, kernels.attention=fused against auto on the same batches in short
   alternating rounds (the ratio per round and its median: rounds of a few seconds keep the machine's drift
   out of the ratio), in each precision asked, and beam 5 over test_2016_flickr sentences (sentences/s); the
   optimizer's step alone, torch's for-loop AdamW against the fused one seq2seq takes.

    SEQ2SEQ_DATA=../shared/data python bench/attention_kernels.py [--rounds 3] [--threads 2] \\
        [--precisions fp32,bf16] [--train-rounds 8] [--steps 10] [--sentences 300]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from seq2seq.models.kernels import attention as kernels
from seq2seq.models.kernels import gemm

HEADS, SIZE = 4, 64


def timed(function, repeats: int = 3) -> float:
    function()
    start = time.perf_counter()
    for _ in range(repeats):
        function()
    return (time.perf_counter() - start) / repeats


def per_length(rounds: int, tokens: int) -> None:
    print(f"{'keys':>5s} | {'training: fused':>15s} | {'explicit':>8s} | {'ratio':>6s} | {'decoding step: fused':>20s} | "
          f"{'explicit':>8s} | {'ratio':>6s}   (ms, median of {rounds} rounds; ratio = fused / explicit)")
    g = torch.Generator().manual_seed(0)
    for length in kernels.LENGTHS:
        cases = {}
        for mode in ("training", "decoding"):  # the cases kernels.attention=auto times
            cases[mode, "fused"], cases[mode, "explicit"] = kernels.timing_cases(mode, HEADS, SIZE, length, tokens, g)
        seconds = {key: [] for key in cases}
        for r in range(rounds):
            for key in (list(cases) if r % 2 == 0 else list(cases)[::-1]):
                seconds[key].append(timed(cases[key]))
        ms = {key: 1000 * statistics.median(v) for key, v in seconds.items()}
        print(f"{length:5d} | {ms['training', 'fused']:15.2f} | {ms['training', 'explicit']:8.2f} | "
              f"{ms['training', 'fused'] / ms['training', 'explicit']:5.2f}x | {ms['decoding', 'fused']:20.3f} | "
              f"{ms['decoding', 'explicit']:8.3f} | {ms['decoding', 'fused'] / ms['decoding', 'explicit']:5.2f}x")


def end_to_end(args) -> None:
    from speed_vs_marian import load, ours  # the same data and model as the Marian comparison

    from seq2seq.data.batching import pad_source
    from seq2seq.data.corpus import read_lines
    from seq2seq.generation.options import GenerationOptions
    from seq2seq.generation.search import generate
    from seq2seq.training.optim import build_optimizer
    from seq2seq.training.options import PRECISIONS

    load_args = argparse.Namespace(data=args.data, cache=args.cache, batch_tokens=2048, rounds=args.train_rounds,
                                   steps=args.steps)
    data, batches = load(load_args)
    torch.manual_seed(0)
    model = ours(data.tokenizer.src_vocab_size).train()
    print(f"kernels.linear=auto: {gemm.configure('auto', 16, model, rows=(256, 32), cache_dir=None)}")
    optimizer = build_optimizer(model, 1e-4, (0.9, 0.98), 1e-9, 1e-4)
    plans = {"fused": kernels.AttentionPlan("fused"), "auto": kernels.current_plan()}

    def train(chunk, dtype) -> float:
        start = time.perf_counter()
        for batch in chunk:
            with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
                loss = model(batch.src, batch.prev_tokens, batch.target, label_smoothing=0.1).loss / batch.ntokens
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    rounds = [batches[1 + r * args.steps : 1 + (r + 1) * args.steps] for r in range(args.train_rounds)]
    tokens = [sum(b.ntokens for b in chunk) for chunk in rounds]
    for precision in args.precisions.split(","):
        dtype = PRECISIONS[precision]
        for plan in plans.values():  # warm-up
            kernels.set_plan(plan)
            train(batches[:1], dtype)
        rates = {name: [] for name in plans}
        for r, chunk in enumerate(rounds):  # short rounds, each plan on the same batches: the ratio per round
            for name in (list(plans) if r % 2 == 0 else list(plans)[::-1]):
                kernels.set_plan(plans[name])
                rates[name].append(tokens[r] / train(chunk, dtype))
        ratios = [a / f for a, f in zip(rates["auto"], rates["fused"])]
        print(f"training {precision}: target tok/s attention fused {statistics.median(rates['fused']):.0f}, auto "
              f"{statistics.median(rates['auto']):.0f}; auto / fused per round {' '.join(f'{x:.3f}' for x in ratios)}, "
              f"median {statistics.median(ratios):.3f}x")

    params = [p for p in model.parameters()]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    steps = {}
    for name, kwargs in (("for-loop", {"foreach": False}), ("fused", {"fused": True})):
        opt = torch.optim.AdamW(params, lr=1e-6, betas=(0.9, 0.98), weight_decay=1e-4, **kwargs)
        steps[name] = timed(opt.step, repeats=20) * 1000
    optimizer.zero_grad(set_to_none=True)
    print(f"AdamW step, {sum(p.numel() for p in params) / 1e6:.1f}M parameters in {len(params)} tensors: "
          f"for-loop {steps['for-loop']:.1f} ms, fused {steps['fused']:.1f} ms")

    if args.sentences:
        model.eval()
        lines = read_lines(os.path.join(args.data, "multi30k", "test_2016_flickr.en"))[: args.sentences]
        ids = sorted(data.tokenizer.encode_src(lines), key=len)
        chunks = [ids[i : i + 100] for i in range(0, len(ids), 100)]
        opts = GenerationOptions(beam_size=5, min_len=20, max_len_a=0.0, max_len_b=20)
        rates = {name: [] for name in plans}
        with torch.no_grad():
            for r in range(args.rounds):
                for name in (list(plans) if r % 2 == 0 else list(plans)[::-1]):
                    kernels.set_plan(plans[name])
                    start = time.perf_counter()
                    for chunk in chunks:
                        generate(model, pad_source(chunk), opts)
                    rates[name].append(len(ids) / (time.perf_counter() - start))
        median = {name: statistics.median(v) for name, v in rates.items()}
        print(f"beam 5, fp32, {len(ids)} sentences, 20 tokens each (pinned): sentences/s attention fused "
              f"{median['fused']:.1f}, auto {median['auto']:.1f} ({median['auto'] / median['fused']:.2f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.environ.get("SEQ2SEQ_DATA"), help="folder holding multi30k/ "
                        "(without it: the per-length table and the calibration only)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=2048, help="tokens a training batch (the recipe's)")
    parser.add_argument("--train-rounds", type=int, default=8, help="end-to-end training rounds per precision")
    parser.add_argument("--steps", type=int, default=10, help="training steps per plan per round")
    parser.add_argument("--precisions", default="fp32,bf16", help="training autocast: fp32, bf16 or both")
    parser.add_argument("--sentences", type=int, default=300, help="test sentences to decode (0: skip)")
    parser.add_argument("--cache", default="outputs/cache")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"threads {torch.get_num_threads()} | torch {torch.__version__} | attention {HEADS} heads of {SIZE}")
    per_length(args.rounds, args.tokens)
    start = time.perf_counter()
    model = torch.nn.Module()
    model.attention_shape = lambda: (HEADS, SIZE)
    record = kernels.configure("auto", model, args.tokens, cache_dir=None)
    print(f"kernels.attention=auto on this host: {time.perf_counter() - start:.2f} s of calibration, {record}")
    if args.data:
        end_to_end(args)


if __name__ == "__main__":
    main()
