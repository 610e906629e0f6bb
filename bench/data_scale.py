"""Memory and start-up time against corpus size: the binarized cache (issue 23).

Generates synthetic parallel corpora of --pairs sizes (default 500,000 and 8,000,000 pairs; words drawn from a
20,000-word synthetic vocabulary, 4-24 words a sentence, the target a word-for-word mapping of the source), then
for each size:
  1. `seq2seq-prepare recipe=multi30k_en_de_transformer tokenizer.model_type=bpe` on it (a joint SentencePiece BPE
     trained on a 2M-line sample; --model-type unigram for the recipe's own; every core):
     wall-clock and the peak resident memory of the process tree (sampled every 0.1 s from /proc);
  2. `seq2seq-train` of the same recipe on the warm cache for a few steps: seconds from the start of the process
     to the first training step, the peak RSS of the process (getrusage) and at its end the split of its pages
     (/proc/self/smaps_rollup: Rss, Pss, private and shared, anonymous): the cache's mapped pages are shared
     with the page cache and every other process that maps them, the private ones are the process's own;
  3. the same with 2 gloo ranks under torchrun (one thread each): each rank's figures.
Prints one table and the ratios of the largest size to the smallest. The table of the done-means is in
bench/README.md ("Data at scale").

    python bench/data_scale.py --folder /tmp/scale [--pairs 500000 8000000] [--steps 20] [--ranks 2]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RECIPE = "recipe=multi30k_en_de_transformer"
MAX_SENTENCES = [2_000_000]
MODEL_TYPE = ["bpe"]


def write_corpus(folder: Path, pairs: int, seed: int = 1) -> None:
    """train.src/.tgt with `pairs` lines and val.src/.tgt with 1,000, unless already there."""
    if (folder / "done").is_file():
        return
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words = ["".join(rng.choice(letters, rng.integers(2, 10))) for _ in range(20_000)]
    mapped = [w[::-1].upper() for w in words]
    zipf = 1.0 / np.arange(1, len(words) + 1)
    zipf /= zipf.sum()
    for split, n in (("train", pairs), ("val", 1000)):
        with open(folder / f"{split}.src", "w") as src, open(folder / f"{split}.tgt", "w") as tgt:
            for start in range(0, n, 100_000):
                count = min(100_000, n - start)
                lengths = rng.integers(4, 25, count)
                ids = rng.choice(len(words), int(lengths.sum()), p=zipf)
                bounds = np.concatenate([[0], np.cumsum(lengths)])
                src.write("".join(" ".join(words[i] for i in ids[a:b]) + "\n" for a, b in zip(bounds, bounds[1:])))
                tgt.write("".join(" ".join(mapped[i] for i in ids[a:b]) + "\n" for a, b in zip(bounds, bounds[1:])))
    (folder / "done").touch()


def tree_rss(pid: int) -> int:
    """Resident bytes of pid and its descendants, now."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo.extend(children.get(p, []))
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


# the preparation's phases, told by the last log lines, and the peak tree RSS within each
PHASES = (("encoding", "encoding "), ("sentencepiece", "training SentencePiece"), ("sampling", "training pairs in"))
phase_peaks: dict[str, int] = {}


def run_watched(cmd: list[str], env: dict) -> tuple[float, int, list[str], float | None]:
    """(seconds, peak tree RSS, output lines, seconds to the first 'step 1 |' line) of cmd."""
    start = time.time()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak, lines, first_step = [0], [], [None]
    phase_peaks.clear()

    def sample():
        while proc.poll() is None:
            rss = tree_rss(proc.pid)
            peak[0] = max(peak[0], rss)
            phase = next((p for p, words in PHASES if any(words in line for line in lines[-3:])), None)
            if phase:
                phase_peaks[phase] = max(phase_peaks.get(phase, 0), rss)
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    for line in proc.stdout:
        lines.append(line.rstrip("\n"))
        if first_step[0] is None and "| loss " in line and " step 1 |" in line:
            first_step[0] = time.time() - start
    proc.wait()
    sampler.join()
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n" + "\n".join(lines[-30:]))
    return time.time() - start, peak[0], lines, first_step[0]


def data_overrides(folder: Path, name: str) -> list[str]:
    return [RECIPE, f"tokenizer.max_sentences={MAX_SENTENCES[0]}", f"tokenizer.model_type={MODEL_TYPE[0]}", f"data.root={folder}", f"data.path={name}", "data.src=src", "data.tgt=tgt", "data.splits.train=train",
            "data.splits.valid=val", "data.splits.test=val", f"data.cache_dir={folder / 'cache'}"]


def measure(folder: Path, pairs: int, steps: int, ranks: int, env: dict) -> dict:
    name = f"p{pairs}"
    write_corpus(folder / name, pairs)
    row = {"pairs": pairs}
    prepare = [sys.executable, "-m", "seq2seq.cli.prepare", *data_overrides(folder, name)]
    row["prepare_s"], row["prepare_peak"], lines, _ = run_watched(prepare, env)
    row["prepare_phase_peaks"] = dict(phase_peaks)
    row["prepare_log"] = [line for line in lines if "cache entry" in line or "chunks" in line]
    train_args = [*data_overrides(folder, name), f"trainer.max_steps={steps}", "trainer.valid_every=100000",
                  "trainer.valid_max_sentences=50", "trainer.log_every=1", "trainer.average_last=0",
                  "trainer.keep_last=0", f"run_dir={folder / 'runs' / name}"]
    one = [sys.executable, str(Path(__file__).resolve()), "_train", *train_args]
    _, _, lines, row["first_step_s"] = run_watched(one, reports(env, folder / "reports" / name))
    row["train"] = read_reports(folder / "reports" / name)
    if ranks > 1:
        many = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
                str(Path(__file__).resolve()), "_train", *train_args[:-1], "threads=1",
                f"run_dir={folder / 'runs' / (name + '_ddp')}"]
        _, row["ddp_tree_peak"], lines, row["ddp_first_step_s"] = run_watched(many, reports(env, folder / "reports" / f"{name}_ddp"))
        row["ddp"] = read_reports(folder / "reports" / f"{name}_ddp")
    return row


def reports(env: dict, folder: Path) -> dict:
    """env with DATA_SCALE_REPORTS: the (emptied) folder where each training process writes its memory_report()."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("rank*.json"):
        old.unlink()
    return {**env, "DATA_SCALE_REPORTS": str(folder)}


def read_reports(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob("rank*.json"))]


def memory_report() -> dict:
    """This process's peak RSS and its pages now, split as smaps_rollup shows them (bytes)."""
    report = {"rank": int(os.environ.get("RANK", "0")),
              "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":", 1)
        if key in ("Rss", "Pss", "Shared_Clean", "Shared_Dirty", "Private_Clean", "Private_Dirty", "Anonymous"):
            report[key] = int(value.split()[0]) * 1024
    report["Private"] = report.pop("Private_Clean") + report.pop("Private_Dirty")
    return report


def train_here(argv: list[str]) -> None:
    """seq2seq-train with argv in this process; at its end one line with memory_report()."""
    from seq2seq.cli.train import main

    sys.argv = ["seq2seq-train", *argv]
    try:
        main()
    finally:
        report = memory_report()
        Path(os.environ["DATA_SCALE_REPORTS"], f"rank{report['rank']}.json").write_text(json.dumps(report))


def mib(value: int) -> str:
    return f"{value / 2**20:,.0f}"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_train":
        train_here(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", type=Path, required=True, help="where corpora, cache and runs go (GBs)")
    parser.add_argument("--pairs", type=int, nargs="+", default=[500_000, 8_000_000])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--ranks", type=int, default=2, help="gloo ranks of the second training (1: none)")
    parser.add_argument("--max-sentences", type=int, default=2_000_000,
                        help="tokenizer.max_sentences (the same for every size, so that their subword lengths match)")
    parser.add_argument("--model-type", choices=["bpe", "unigram"], default="bpe",
                        help="tokenizer.model_type: SentencePiece's unigram trainer needs about 20 bytes per sample "
                             "character (3.9 GB on 2M lines here), BPE grows with the word types (docs/data.md)")
    args = parser.parse_args()
    MAX_SENTENCES[0] = args.max_sentences
    MODEL_TYPE[0] = args.model_type
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    rows = [measure(args.folder, n, args.steps, args.ranks, env) for n in args.pairs]
    print(f"{'pairs':>10s} | prepare s | prepare peak MiB | first step s | train peak RSS | Rss / Pss / Private / "
          f"Anonymous at the end (MiB) | ranks: first step s, each rank's peak, Private")
    for row in rows:
        t = row["train"][0]
        ddp = ", ".join(f"{mib(r['peak_rss'])} / {mib(r['Private'])}" for r in row.get("ddp", []))
        print(f"{row['pairs']:>10,d} | {row['prepare_s']:9.1f} | {mib(row['prepare_peak']):>16s} | "
              f"{row['first_step_s'] or float('nan'):12.1f} | {mib(t['peak_rss']):>14s} | {mib(t['Rss'])} / "
              f"{mib(t['Pss'])} / {mib(t['Private'])} / {mib(t['Anonymous'])} | "
              f"{row.get('ddp_first_step_s') or float('nan'):.1f}, {ddp}")
        print("            " + " | ".join(row["prepare_log"]))
        print("            prepare peak by phase (MiB): " + ", ".join(f"{k} {mib(v)}" for k, v in row["prepare_phase_peaks"].items()))
    if len(rows) > 1:
        big, small = rows[-1]["train"][0], rows[0]["train"][0]
        print(f"train peak RSS {rows[-1]['pairs']:,} / {rows[0]['pairs']:,} pairs: {big['peak_rss'] / small['peak_rss']:.2f}x;"
              f" private {big['Private'] / small['Private']:.2f}x")
    print(json.dumps(rows, default=str), file=sys.stderr)


if __name__ == "__main__":
    main()
