"""Peak memory and time of seq2seq-decode on a large file: streaming keeps memory bounded.

Builds an input of --lines lines (default 200,000) by cycling through the Multi30k training sources
(real sentences), decodes it with `seq2seq-decode` in a child process (chunk_lines as configured,
default 10,000), checks that the output has exactly one line per input line, and reports the
child's peak resident memory (getrusage, RUSAGE_CHILDREN) and wall-clock time. A second, 10x
smaller file is decoded the same way first, so that the table shows whether memory grows with the
file (it should not). Issue 11's done-means: 200,000 lines below 1.5 GB.

    SEQ2SEQ_DATA=../shared/data python bench/decode_memory.py --run outputs/m30k [--lines 200000] \
        [generation=greedy chunk_lines=10000 ...]    # anything after the options goes to seq2seq-decode
"""
from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def decode(run: str, lines: int, sentences: list[str], folder: Path, extra: list[str]) -> dict:
    source, output = folder / f"in{lines}.txt", folder / f"out{lines}.txt"
    with source.open("w", encoding="utf-8") as f:
        for line in itertools.islice(itertools.cycle(sentences), lines):
            f.write(line + "\n")
    # each measurement in its own grandchild, so RUSAGE_CHILDREN of that middle process is this decode alone
    probe = ("import resource, subprocess, sys, time; t = time.time(); "
             "rc = subprocess.call(sys.argv[1:]); "
             "print(time.time() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, rc)")
    command = [sys.executable, "-m", "seq2seq.decode", f"run={run}", f"input={source}", f"output={output}", *extra]
    done = subprocess.run([sys.executable, "-c", probe, *command], capture_output=True, text=True, cwd=REPO,
                          check=True)
    seconds, peak_kib, rc = done.stdout.split()
    if int(rc) != 0:
        sys.exit(f"seq2seq-decode failed (exit {rc}):\n{done.stderr[-3000:]}")
    with output.open(encoding="utf-8") as f:
        written = sum(1 for _ in f)
    if written != lines:
        sys.exit(f"{output}: {written} lines for {lines} input lines")
    return {"lines": lines, "seconds": float(seconds), "peak_mib": int(peak_kib) / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="trained run folder")
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument("--threads", type=int, default=2)
    args, extra = parser.parse_known_args()
    root = os.environ.get("SEQ2SEQ_DATA")
    if not root:
        sys.exit("set SEQ2SEQ_DATA to the folder that holds multi30k/ (e.g. ../shared/data)")
    sentences = (Path(root) / "multi30k" / "train.en").read_text(encoding="utf-8").splitlines()
    extra = [f"threads={args.threads}", *extra]
    rows = []
    with tempfile.TemporaryDirectory(prefix="seq2seq-decode-memory-") as tmp:
        for lines in (max(args.lines // 10, 1), args.lines):
            rows.append(decode(args.run, lines, sentences, Path(tmp), extra))
            print(f"{rows[-1]['lines']:>9,} lines  {rows[-1]['seconds']:8.1f} s  "
                  f"{rows[-1]['lines'] / rows[-1]['seconds']:7.1f} lines/s  peak RSS {rows[-1]['peak_mib']:7.0f} MiB",
                  flush=True)
    print(f"seq2seq-decode {' '.join(extra)} on {args.run}: peak RSS {rows[-1]['peak_mib']:.0f} MiB for "
          f"{rows[-1]['lines']:,} lines, {rows[0]['peak_mib']:.0f} MiB for {rows[0]['lines']:,} "
          f"(growth {rows[-1]['peak_mib'] / rows[0]['peak_mib']:.2f}x for 10x the lines)")


if __name__ == "__main__":
    main()
