"""Decoding a trained Multi30k Transformer: this project against Hugging Face and CTranslate2 on the same weights.

Systems, all in this process on the same threads, over the same sources (test_2016_flickr, 1,000
sentences), the same length limits (the run's generation settings: max_len_a * source length +
max_len_b) and the same length penalty:
  ours beam 5 / ours greedy        seq2seq's search (what seq2seq-decode runs)
  HF beam 5 / HF greedy            `generate` of the Hugging Face export (seq2seq.export.huggingface.huggingface_model,
                                   the exact same weights), fed our SentencePiece ids
  CT2 f32 / CT2 int8 beam 5        CTranslate2 through the export seq2seq-decode backend=ctranslate2 uses
  CT2 f32 greedy                   (its outputs are compared with ours greedy); each translator is loaded once,
                                   outside the timed rounds (before 2026-12-03 every round loaded it again)
Rounds alternate the systems (--rounds, at least 3) and the table reports each system's median
time; outputs come from the first round. Columns: sentences/s, target tokens/s (our SentencePiece
pieces of the outputs, EOS excluded), sacreBLEU against the references, and the share of outputs
identical to ours with the same search. The last line gives the ratios of issue 9's done-means.

    SEQ2SEQ_DATA=../shared/data python bench/decode_trained.py --run outputs/m30k [--checkpoint best]
    SEQ2SEQ_DATA=../shared/data python bench/decode_trained.py        # trains outputs/bench_m30k first
                                                                       # (recipe, --train-minutes 30)

Needs the export extra (transformers, ctranslate2) and sacrebleu.
"""
from __future__ import annotations

import argparse
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
    parser.add_argument("--run", default=None, help="trained Transformer run folder (default: train outputs/bench_m30k)")
    parser.add_argument("--checkpoint", default="best")
    parser.add_argument("--train-minutes", type=float, default=30.0, help="when there is no --run")
    parser.add_argument("--split", default="test_2016_flickr")
    parser.add_argument("--sentences", type=int, default=0, help="first N sentences (0 = all)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-tokens", type=int, default=6000, help="source tokens per batch (all systems)")
    parser.add_argument("--skip", default="", help="comma-separated systems to leave out, e.g. hf_beam")
    parser.add_argument("--json", default=None, help="also write the table to this file")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    return args


def data_dir() -> Path:
    root = os.environ.get("SEQ2SEQ_DATA")
    if not root:
        sys.exit("set SEQ2SEQ_DATA to the folder that holds multi30k/ (e.g. ../shared/data)")
    return Path(root) / "multi30k"


def trained_run(args) -> Path:
    if args.run:
        return Path(args.run)
    run = REPO / "outputs" / "bench_m30k"
    if not (run / "checkpoints" / f"{args.checkpoint}.pt").is_file():
        print(f"training {run} ({args.train_minutes:g} minutes)", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "seq2seq.train", "recipe=multi30k_en_de_transformer", f"run_dir={run}",
                        f"trainer.max_minutes={args.train_minutes}", "trainer.progress=false"], check=True, cwd=REPO)
    return run


def batches(src_ids: list[list[int]], batch_tokens: int) -> list[list[int]]:
    """Indices of length-sorted batches of at most batch_tokens source tokens (what decode_ids builds)."""
    order = sorted(range(len(src_ids)), key=lambda i: len(src_ids[i]))
    out, current, longest = [], [], 0
    for i in order:
        longest_then = max(longest, len(src_ids[i]) + 1)
        if current and longest_then * (len(current) + 1) > batch_tokens:
            out.append(current)
            current, longest_then = [], len(src_ids[i]) + 1
        current.append(i)
        longest = longest_then
    return out + ([current] if current else [])


def huggingface_decoder(model, opts_beam, opts_greedy, batch_tokens: int):
    """Functions ids -> output ids with HF generate on the exported weights (same length limits per batch)."""
    from seq2seq.data.batching import pad_source
    from seq2seq.data.tokenizer import EOS, PAD
    from seq2seq.export.huggingface import huggingface_generation_config, huggingface_model
    from seq2seq.generation.options import length_bounds

    hf = huggingface_model(model)

    def run(src_ids, opts):
        config = huggingface_generation_config(opts, model.max_positions)
        results = [None] * len(src_ids)
        for idx in batches(src_ids, batch_tokens):
            src = pad_source([src_ids[i] for i in idx], max_len=model.max_positions)
            least, most = length_bounds(src, opts, model.max_positions)
            config.max_length = int(most.max()) + 2   # start token + tokens + EOS
            config.min_new_tokens = int(least.min())
            with torch.no_grad():
                out = hf.generate(input_ids=src, attention_mask=src.ne(PAD), generation_config=config)
            for i, row in zip(idx, out.tolist()):
                row = row[1:]
                results[i] = row[: row.index(EOS)] if EOS in row else [t for t in row if t != PAD]
        return results

    return lambda ids: run(ids, opts_beam), lambda ids: run(ids, opts_greedy)


def main() -> None:
    import dataclasses

    import sacrebleu

    from seq2seq.backends.ctranslate2 import CTranslate2Backend, exported_folder
    from seq2seq.runs import RunFolder
    from seq2seq.generation.decoding import decode_ids
    from seq2seq.generation.options import GenerationOptions

    args = arguments()
    torch.set_num_threads(args.threads)
    folder = data_dir()
    run = trained_run(args)
    folder_of_run = RunFolder(run)
    model, tokenizer, path = folder_of_run.load(args.checkpoint)
    saved = folder_of_run.generation_options() or GenerationOptions()  # the run's length limits and penalty
    beam = dataclasses.replace(saved, strategy="beam", beam_size=5, nbest=1)
    greedy = dataclasses.replace(beam, strategy="greedy", beam_size=1)
    sources = (folder / f"{args.split}.en").read_text(encoding="utf-8").splitlines()
    refs = (folder / f"{args.split}.de").read_text(encoding="utf-8").splitlines()
    if args.sentences:
        sources, refs = sources[: args.sentences], refs[: args.sentences]
    src_ids = tokenizer.encode_src(sources)
    ct2 = exported_folder(folder_of_run, args.checkpoint)
    device = torch.device("cpu")

    def ours(opts):
        return lambda: [h[0].tokens for h in decode_ids(model, src_ids, opts, batch_tokens=args.batch_tokens,
                                                         device=device)]

    def ctranslate2(opts, compute_type):  # the translator is loaded once, outside the timed rounds
        backend = CTranslate2Backend.from_folder(ct2, device=device, compute_type=compute_type, threads=args.threads,
                                                 batch_tokens=args.batch_tokens)
        return lambda: [h[0].tokens for h in backend.decode(src_ids, opts)]

    hf_beam, hf_greedy = huggingface_decoder(model, beam, greedy, args.batch_tokens)
    systems = {  # name: (search it is compared with, function)
        "ours_beam": ("ours_beam", ours(beam)), "ours_greedy": ("ours_greedy", ours(greedy)),
        "hf_beam": ("ours_beam", lambda: hf_beam(src_ids)), "hf_greedy": ("ours_greedy", lambda: hf_greedy(src_ids)),
        "ct2_f32_beam": ("ours_beam", ctranslate2(beam, "float32")),
        "ct2_int8_beam": ("ours_beam", ctranslate2(beam, "int8")),
        "ct2_f32_greedy": ("ours_greedy", ctranslate2(greedy, "float32")),
    }
    for name in filter(None, args.skip.split(",")):
        systems.pop(name)
    times: dict[str, list[float]] = {name: [] for name in systems}
    outputs: dict[str, list[list[int]]] = {}
    for r in range(args.rounds):
        for name, (_, function) in systems.items():
            start = time.perf_counter()
            out = function()
            times[name].append(time.perf_counter() - start)
            outputs.setdefault(name, out)
            print(f"round {r + 1}: {name} {times[name][-1]:.2f}s", file=sys.stderr)
    texts = {name: tokenizer.decode_tgt(out) for name, out in outputs.items()}
    rows = []
    print(f"{run} ({path.name}), {len(sources)} sentences of {args.split}, {args.threads} threads, "
          f"torch {torch.__version__}, median of {args.rounds} rounds")
    print(f"{'system':16} {'sent/s':>8} {'tok/s':>8} {'BLEU':>6} {'same as ours':>13}")
    for name, (reference, _) in systems.items():
        seconds = statistics.median(times[name])
        tokens = sum(len(t) for t in outputs[name])
        bleu = sacrebleu.corpus_bleu(texts[name], [refs]).score
        same = (sum(a == b for a, b in zip(texts[name], texts[reference])) / len(sources)
                if reference in texts else float("nan"))
        rows.append({"system": name, "seconds": seconds, "sentences_per_s": len(sources) / seconds,
                     "tokens_per_s": tokens / seconds, "bleu": bleu, "identical_to": reference, "identical": same})
        print(f"{name:16} {len(sources) / seconds:8.1f} {tokens / seconds:8.0f} {bleu:6.2f} {same:13.1%}")
    speed = {row["system"]: row["sentences_per_s"] for row in rows}

    def ratio(a, b):
        return f"{speed[a] / speed[b]:.2f}x" if a in speed and b in speed else "n/a"

    print(f"ratios: ours beam / HF beam {ratio('ours_beam', 'hf_beam')}, ours beam / CT2 f32 beam "
          f"{ratio('ours_beam', 'ct2_f32_beam')}, CT2 f32 beam / HF beam {ratio('ct2_f32_beam', 'hf_beam')}, "
          f"CT2 int8 beam / HF beam {ratio('ct2_int8_beam', 'hf_beam')}, ours greedy / HF greedy "
          f"{ratio('ours_greedy', 'hf_greedy')}")
    if args.json:
        Path(args.json).write_text(json.dumps({"run": str(run), "checkpoint": str(path), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
