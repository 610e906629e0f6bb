"""The tokenizer's memory: SentencePiece unigram against BPE on a large sample (issue 23).

Writes the synthetic corpus of bench/data_scale.py (its `write_corpus`, the same seed: the first N pairs of any
of its corpora are the same lines), then trains one SentencePiece model per trainer in a fresh child process
(the project's own `train_sentencepiece`, vocabulary 8,000, 2 threads; "unigram-tsv" gives the unigram the
sample as word counts, SentencePiece's `input_format=tsv`) and reports for each: seconds, the child's peak
resident memory (getrusage, the sentences held in Python included; the resident memory before training is
printed beside it) and the mean pieces a pair (source + target) on the 1,000 validation pairs.

    python bench/tokenizer_memory.py --folder /tmp/spm [--pairs 1000000] [--trainers unigram:500000 ...]

Each trainer is `type:pairs` (the sample: the first `pairs` sources and targets, 2 x pairs lines). The table
of the done-means is in bench/README.md ("The tokenizer's memory").
"""
from __future__ import annotations

import argparse
import collections
import io
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data_scale import write_corpus  # noqa: E402

DEFAULT_TRAINERS = ["unigram:500000", "unigram:1000000", "unigram-tsv:1000000", "bpe:1000000"]


def rss_now() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def read_lines(path: Path, n: int) -> list[str]:
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if len(out) == n:
                break
            out.append(line.rstrip("\n"))
    return out


def child(folder: Path, trainer: str, pairs: int) -> dict:
    """One training in this process; returns its figures."""
    import sentencepiece as spm

    from seq2seq.data.tokenizer import train_sentencepiece

    sentences = read_lines(folder / "train.src", pairs) + read_lines(folder / "train.tgt", pairs)
    chars = sum(len(s) + 1 for s in sentences)
    before = rss_now()
    out = folder / f"spm-{trainer}-{pairs}"
    start = time.perf_counter()
    if trainer == "unigram-tsv":
        counts = collections.Counter(w for s in sentences for w in s.split())
        del sentences
        tsv = folder / f"words-{pairs}.tsv"
        tsv.write_text("".join(f"{w}\t{c}\n" for w, c in counts.items()), encoding="utf-8")
        model = io.BytesIO()
        spm.SentencePieceTrainer.train(input=str(tsv), input_format="tsv", model_writer=model,
                                       model_type="unigram", vocab_size=8000, character_coverage=1.0,
                                       pad_id=0, unk_id=1, bos_id=2, eos_id=3, hard_vocab_limit=False,
                                       num_threads=2, minloglevel=2)
        processor = spm.SentencePieceProcessor(model_proto=model.getvalue())
    else:
        path = train_sentencepiece(sentences, out, model_type=trainer, vocab_size=8000, character_coverage=1.0,
                                   max_sentences=len(sentences), threads=2)
        processor = spm.SentencePieceProcessor(model_file=str(path))
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    val = [a + "\n" + b for a, b in zip(read_lines(folder / "val.src", 1000), read_lines(folder / "val.tgt", 1000))]
    pieces = sum(len(processor.encode(t)) for v in val for t in v.split("\n")) / len(val)
    return {"trainer": trainer, "pairs": pairs, "characters": chars, "seconds": round(seconds, 1),
            "peak_rss_mib": round(peak / 2**20), "rss_before_mib": round(before / 2**20),
            "pieces_a_pair": round(pieces, 1), "vocabulary": processor.get_piece_size()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", type=Path, required=True, help="where the corpus and models go")
    parser.add_argument("--pairs", type=int, default=1_000_000, help="training pairs of the corpus written")
    parser.add_argument("--trainers", nargs="+", default=DEFAULT_TRAINERS, help="type:pairs, e.g. bpe:1000000")
    parser.add_argument("--child", nargs=2, metavar=("TYPE", "PAIRS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.folder, args.child[0], int(args.child[1]))))
        return
    runs = []
    for spec in args.trainers:
        kind, _, n = spec.partition(":")
        if kind not in ("unigram", "unigram-tsv", "bpe") or not n.isdigit() or int(n) > args.pairs:
            parser.error(f"--trainers {spec!r}: want unigram|unigram-tsv|bpe:PAIRS with PAIRS <= --pairs")
        runs.append((kind, int(n)))
    write_corpus(args.folder, args.pairs)
    print(f"# {platform.processor() or platform.machine()}, python {platform.python_version()}; "
          f"corpus {args.folder} ({args.pairs} pairs)")
    print("| trainer | sample lines | characters | seconds | peak RSS (before training) | pieces a pair |")
    print("|---|---|---|---|---|---|")
    results = []
    for kind, n in runs:
        done = subprocess.run([sys.executable, __file__, "--folder", str(args.folder), "--child", kind, str(n)],
                              capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"{kind}:{n} failed:\n{done.stderr[-2000:]}")
        r = json.loads(done.stdout.strip().splitlines()[-1])
        results.append(r)
        print(f"| {kind} | {2 * n:,} | {r['characters'] / 1e6:.1f}M | {r['seconds']} | "
              f"{r['peak_rss_mib']:,} MiB ({r['rss_before_mib']:,}) | {r['pieces_a_pair']} |", flush=True)
    (args.folder / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
