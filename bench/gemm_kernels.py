"""The matrix products of a Transformer training step on PyTorch's two CPU kernels: MKL (`torch.mm`,
what `nn.Linear` uses) against oneDNN (seq2seq/models/kernels/gemm.py, what this project's layers use).

For each product of the Multi30k Transformer (d 256, FFN 1024, 8k vocabulary) at the recipe's batch
of 2,048 rows, the forward product, the input gradient and the weight gradient, alternating rounds,
median GFLOP/s. Tells whether this CPU gains from oneDNN: MKL does not use AVX-512 on AMD processors,
so the gain is large there and may be nil on an Intel one.

Then what kernels.linear=auto picks for these shapes on this host (the calibration the entry points
run, timed; not cached here) and the same products under each plan (mkl, onednn, auto): auto should be
at least as fast as the faster fixed choice.

    python bench/gemm_kernels.py [--rows 2048] [--rounds 5] [--threads 2]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from seq2seq.models.kernels import gemm

SHAPES = [("attention q, k, v", 256, 768), ("attention output", 256, 256), ("feed-forward in", 256, 1024),
          ("feed-forward out", 1024, 256), ("output layer (512-row chunk)", 256, 8000)]


def products(rows: int, inner: int, columns: int):
    """{(which, kernel): function} for the three products of a linear layer x [rows, inner] -> [rows, columns]."""
    x, w, dy = torch.randn(rows, inner), torch.randn(columns, inner), torch.randn(rows, columns)
    return {
        ("forward", "MKL"): lambda: x @ w.t(), ("forward", "oneDNN"): lambda: gemm.mm_nt(x, w),
        ("input gradient", "MKL"): lambda: dy @ w, ("input gradient", "oneDNN"): lambda: gemm.mm_nn(dy, w),
        ("weight gradient", "MKL"): lambda: dy.t() @ x, ("weight gradient", "oneDNN"): lambda: gemm.mm_tn(dy, x),
    }


def timed(function, repeats: int) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        function()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2048, help="rows of the batch (tokens)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=10, help="calls per timing")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.rounds < 1 or args.repeats < 1 or args.rows < 1:
        parser.error("--rows, --rounds and --repeats must be >= 1")
    if not gemm._op_available():
        parser.error("this torch build has no oneDNN inner product")
    torch.set_num_threads(args.threads)
    print(f"threads {torch.get_num_threads()} | torch {torch.__version__} | GFLOP/s, median of {args.rounds} rounds")
    print(f"{'product':30s} | {'':15s} | {'MKL':>6s} | {'oneDNN':>6s} | ratio")
    total = {"MKL": 0.0, "oneDNN": 0.0}
    for name, inner, columns in SHAPES:
        rows = 512 if columns == 8000 else args.rows
        flops = 2 * rows * inner * columns
        for which in ("forward", "input gradient", "weight gradient"):
            funcs = products(rows, inner, columns)
            seconds = {"MKL": [], "oneDNN": []}
            for kernel in seconds:
                funcs[which, kernel]()  # warm-up (oneDNN compiles its kernel)
            for r in range(args.rounds):
                for kernel in ("MKL", "oneDNN") if r % 2 == 0 else ("oneDNN", "MKL"):
                    seconds[kernel].append(timed(funcs[which, kernel], args.repeats))
            median = {k: statistics.median(v) for k, v in seconds.items()}
            for k in total:
                total[k] += median[k]
            print(f"{name:30s} | {which:15s} | {flops / median['MKL'] / 1e9:6.0f} | {flops / median['oneDNN'] / 1e9:6.0f} | "
                  f"{median['MKL'] / median['oneDNN']:.2f}x")
    print(f"ratios: all products of the table, oneDNN/MKL {total['MKL'] / total['oneDNN']:.2f}x faster")

    shapes = [(inner, columns) for _, inner, columns in SHAPES]
    start = time.perf_counter()
    plan, record = gemm.calibrate(shapes, [512, 32], cache_dir=None)
    print(f"kernels.linear=auto on this host: {time.perf_counter() - start:.2f} s of calibration, oneDNN for "
          f"{', '.join(record['onednn']) or 'nothing'} (kind/size class; classes: <1M, <8M, <64M, >=64M multiply-adds)")
    plans = {"mkl": gemm.KernelPlan("mkl"), "onednn": gemm.KernelPlan("onednn", gemm.ALL_ONEDNN, gemm.MIN_MACS),
             "auto": plan}
    seconds = {name: [] for name in plans}
    for r in range(args.rounds):
        for name in (list(plans) if r % 2 == 0 else list(plans)[::-1]):
            gemm.set_plan(plans[name])
            t = 0.0
            for _, inner, columns in SHAPES:
                rows = 512 if columns == 8000 else args.rows
                x, w, dy = torch.randn(rows, inner), torch.randn(columns, inner), torch.randn(rows, columns)
                for f in (lambda: gemm.mm_nt(x, w), lambda: gemm.mm_nn(dy, w), lambda: gemm.mm_tn(dy, x)):
                    f()
                    t += timed(f, args.repeats)
            seconds[name].append(t)
    median = {k: statistics.median(v) for k, v in seconds.items()}
    print("all products of the table under each plan (ms): " + ", ".join(f"{k} {1e3 * v:.1f}" for k, v in median.items()))
    print(f"ratios: auto/mkl {median['mkl'] / median['auto']:.2f}x, auto/onednn {median['onednn'] / median['auto']:.2f}x "
          "faster (>= 1 and ~1 against the faster fixed choice)")


if __name__ == "__main__":
    main()
