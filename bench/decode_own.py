"""Decoding speed of this project's own models that no other toolkit can load: an LSTM + Luong
translation model and a pointer-generator summarization model (a guard against regressions).

For each run: beam search with the run's saved decoding settings (what seq2seq-decode uses by
default: beam size, length limits and penalty, n-gram blocking, ...) and greedy search with the
same limits, over the same inputs, alternating rounds (--rounds, at least 3), medians. Columns:
inputs/s, output tokens/s (subwords, EOS excluded), the metric against the references (BLEU for
translation, ROUGE-L for summaries, from the first round) and the mean output length.

    SEQ2SEQ_DATA=../shared/data python bench/decode_own.py \\
        --luong outputs/luong --summarizer outputs/samsum_pg [--rounds 3 --threads 2]

Without --luong the script first trains outputs/bench_luong with recipe=multi30k_en_de_lstm_luong
for --train-minutes (default 10; --luong skip leaves it out); without --summarizer that part is
left out (a summarization recipe takes an hour).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--luong", default=None, help="trained LSTM + Luong Multi30k run (default: train one; "
                                                      "'skip': leave it out)")
    parser.add_argument("--summarizer", default=None, help="trained SAMSum run (default: left out)")
    parser.add_argument("--checkpoint", default="best")
    parser.add_argument("--train-minutes", type=float, default=10.0)
    parser.add_argument("--sentences", type=int, default=0, help="first N inputs of each set (0 = all)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-tokens", type=int, default=6000, help="source tokens per batch")
    parser.add_argument("--json", default=None, help="also write the table to this file")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    return args


def data_dir() -> Path:
    root = os.environ.get("SEQ2SEQ_DATA")
    if not root:
        sys.exit("set SEQ2SEQ_DATA to the folder that holds multi30k/ and samsum/ (e.g. ../shared/data)")
    return Path(root)


def luong_run(args) -> Path:
    if args.luong:
        return Path(args.luong)
    run = REPO / "outputs" / "bench_luong"
    if not (run / "checkpoints" / f"{args.checkpoint}.pt").is_file():
        print(f"training {run} ({args.train_minutes:g} minutes)", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "seq2seq.train", "recipe=multi30k_en_de_lstm_luong", f"run_dir={run}",
                        f"trainer.max_minutes={args.train_minutes}", "trainer.progress=false"], check=True, cwd=REPO)
    return run


def main() -> None:
    from seq2seq.data.corpus import read_documents
    from seq2seq.runs import RunFolder
    from seq2seq.generation.decoding import decode_ids
    from seq2seq.generation.options import GenerationOptions
    from seq2seq.metrics import bleu, rouge

    args = arguments()
    torch.set_num_threads(args.threads)
    data = data_dir()
    m30k = data / "multi30k"
    tasks = []
    if args.luong != "skip":
        tasks.append(("luong", luong_run(args), read_documents(str(m30k / "test_2016_flickr.en")),
                      read_documents(str(m30k / "test_2016_flickr.de")), "BLEU"))
    if args.summarizer:
        test = str(data / "samsum" / "test.jsonl")
        tasks.append(("summarizer", Path(args.summarizer), read_documents(test, "dialogue"),
                      read_documents(test, "summary"), "ROUGE-L"))
    device = torch.device("cpu")
    systems = {}
    for name, run, sources, refs, metric in tasks:
        if args.sentences:
            sources, refs = sources[: args.sentences], refs[: args.sentences]
        folder_of_run = RunFolder(run)
        model, tokenizer, path = folder_of_run.load(args.checkpoint)
        saved = folder_of_run.generation_options() or GenerationOptions()
        beam = dataclasses.replace(saved, strategy="beam", nbest=1)
        greedy = dataclasses.replace(saved, strategy="greedy", beam_size=1, nbest=1, coverage_penalty=0.0)
        src_ids = tokenizer.encode_src(sources)
        for search, opts in ((f"beam {beam.beam_size}", beam), ("greedy", greedy)):
            def function(model=model, src_ids=src_ids, opts=opts):
                return [h[0].tokens for h in decode_ids(model, src_ids, opts, batch_tokens=args.batch_tokens,
                                                        device=device)]
            systems[f"{name} {search}"] = (function, tokenizer, refs, metric, f"{run} ({path.name})")
    times: dict[str, list[float]] = {name: [] for name in systems}
    outputs: dict[str, list[list[int]]] = {}
    for r in range(args.rounds):
        for name, (function, *_) in systems.items():
            start = time.perf_counter()
            out = function()
            times[name].append(time.perf_counter() - start)
            outputs.setdefault(name, out)
            print(f"round {r + 1}: {name} {times[name][-1]:.2f}s", file=sys.stderr)
    print(f"{args.threads} threads, torch {torch.__version__}, median of {args.rounds} rounds")
    print(f"{'system':22} {'inputs/s':>9} {'tok/s':>8} {'metric':>14} {'mean length':>12}  run")
    rows = []
    for name, (_, tokenizer, refs, metric, run) in systems.items():
        seconds = statistics.median(times[name])
        tokens = sum(len(t) for t in outputs[name])
        texts = tokenizer.decode_tgt(outputs[name])
        score = bleu(texts, refs) if metric == "BLEU" else rouge(texts, refs)["rougeL"]
        row = {"system": name, "run": run, "inputs": len(refs), "seconds": seconds,
               "inputs_per_s": len(refs) / seconds, "tokens_per_s": tokens / seconds, metric: score,
               "mean_length": tokens / len(refs)}
        rows.append(row)
        print(f"{name:22} {row['inputs_per_s']:9.1f} {row['tokens_per_s']:8.0f} {metric + ' ' + format(score, '.2f'):>14} "
              f"{row['mean_length']:12.1f}  {run}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
