"""The training losses of the two output layers against the plain autograd losses a peer writes, one process.

Per batch of the Multi30k recipe's size (2,048 target rows, features of 256, an 8k vocabulary), forward and
backward, milliseconds (median of alternating rounds) and the ratio:

- the softmax output layer (seq2seq/models/output.py, chunks of 512 rows, products on kernels.linear=auto)
  against F.cross_entropy(h @ W^T) with label smoothing 0.1 over the whole [rows, V] logits (Hugging Face
  Marian's loss; torch's own kernels);
- the pointer-generator (seq2seq/models/copy.py, chunks of 256, 120 source pieces a row) against autograd
  through its log-space mixture (logaddexp of log p_gen + log_softmax and log(1 - p_gen) + log copy).

In each precision asked (bf16: both sides under the same autocast). Needs no data.

    python bench/output_loss.py [--rounds 5] [--threads 2] [--precisions fp32,bf16]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from seq2seq.models.copy import PointerGenerator, _safe_log
from seq2seq.models.kernels import gemm
from seq2seq.models.model import DecoderOut, OutputSizes
from seq2seq.models.output import OutputLayer, smoothed_nll
from seq2seq.training.options import PRECISIONS

ROWS, DIM, VOCAB, SOURCE, SMOOTHING = 2048, 256, 8000, 120, 0.1


def softmax_sides(rows: DecoderOut, target: torch.Tensor):
    layer = OutputLayer(OutputSizes(DIM, DIM, DIM, VOCAB, True))

    def ours():
        return layer.loss(rows, None, target, SMOOTHING)[0]

    def plain():
        return F.cross_entropy(rows.features @ layer.weight.t(), target, reduction="sum", label_smoothing=SMOOTHING)

    return layer, ours, plain


def copy_sides(rows: DecoderOut, src: torch.Tensor, target: torch.Tensor):
    layer = PointerGenerator(OutputSizes(DIM, DIM, DIM, VOCAB, True))

    def ours():
        return layer.loss(rows, src, target, SMOOTHING)[0]

    def plain():
        log_gen, log_copy_gate, log_vocab, copy = layer.parts(rows, src)
        logp = torch.logaddexp(log_gen[:, None] + log_vocab, log_copy_gate[:, None] + _safe_log(copy))
        return smoothed_nll(logp, target, SMOOTHING)[0]

    return layer, ours, plain


def timed(loss, dtype) -> float:
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
        value = loss()
    value.backward()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (medians reported)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precisions", default="fp32,bf16")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    features = torch.randn(ROWS, DIM, requires_grad=True)
    attention = torch.softmax(torch.randn(ROWS, SOURCE), dim=1).requires_grad_()
    rows = DecoderOut(features, attention, torch.randn(ROWS, DIM), torch.randn(ROWS, DIM))
    src = torch.randint(4, VOCAB, (ROWS, SOURCE))
    target = torch.randint(4, VOCAB, (ROWS,))
    sides = {"softmax": softmax_sides(rows, target), "pointer-generator": copy_sides(rows, src, target)}
    for name, (layer, _, _) in sides.items():
        print(f"{name}: kernels.linear=auto {gemm.configure('auto', 16, layer, rows=(ROWS, 512, 256), cache_dir=None)}")
    print(f"threads {torch.get_num_threads()}, {ROWS} rows x {DIM} -> {VOCAB}, label smoothing {SMOOTHING}; "
          "forward + backward per batch, median over rounds")
    for precision in args.precisions.split(","):
        dtype = PRECISIONS[precision]
        for name, (layer, ours, plain) in sides.items():
            with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
                reference, value = plain().item(), ours().item()
            assert abs(value - reference) <= 1e-2 * abs(reference), (name, value, reference)
            for loss in (ours, plain):  # warm-up
                timed(loss, dtype)
            times = {"seq2seq": [], "plain": []}
            for r in range(args.rounds):
                for side, loss in ((("seq2seq", ours), ("plain", plain)) if r % 2 == 0
                                   else (("plain", plain), ("seq2seq", ours))):
                    times[side].append(timed(loss, dtype))
            ours_ms, plain_ms = (1e3 * statistics.median(times[s]) for s in ("seq2seq", "plain"))
            print(f"{precision:5s} {name:18s} seq2seq {ours_ms:7.1f} ms | plain autograd {plain_ms:7.1f} ms | "
                  f"{plain_ms / ours_ms:.2f}x   (loss {value:.1f} against {reference:.1f})")
            features.grad = attention.grad = None
            layer.zero_grad(set_to_none=True)


if __name__ == "__main__":
    main()
