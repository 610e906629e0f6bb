"""Terminology constraints, ensembles and MBR on Multi30k (issue 24), against plain beam search, in one process.

On test_2016_flickr (1,000 sentences) with run A's generation settings (beam 5, length penalty 1.0, length
limit 1.2 x source + 10), in batches of --batch sentences sorted by source length:

  beam 5                 the plain search
  terminology            the constraint file this script builds (written to --out/terms.jsonl): for each
                         sentence, up to --terms reference words that beam 5's output lacks: German nouns, i.e.
                         capitalised words of 4+ letters that are not the reference's first word, punctuation
                         stripped, in reference order. Reported: the share of terms in the constrained output
                         (as a word, and as text), unmet ones (phrases the search could not fit), BLEU / chrF
                         with and without, and the time against beam 5 at the same batch size
  ensemble               runs A and B (--runs A B) with ensemble.combine=logprob and prob, against each alone
  MBR                    generation=mbr: 32 epsilon samples (0.02) or beam search's 32-best, chrF utility;
                         and beam search's 32-best with BLEU utility

With --samsum RUN (a SAMSum run, e.g. recipe=samsum_pointer_generator), on SAMSum test (819 dialogues) with the
run's own generation settings: beam search against MBR with ROUGE-L utility (32 epsilon samples, and beam
search's 32-best) and with chrF utility (32 epsilon samples): ROUGE-1/2/L, chrF, time.

    SEQ2SEQ_DATA=../shared/data python bench/guided_decoding.py --runs RUN_A RUN_B [--samsum RUN] [--threads 2]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import sacrebleu
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from seq2seq.backends import BackendSettings, open_backend  # noqa: E402
from seq2seq.backends.pytorch import mbr_select  # noqa: E402
from seq2seq.data.batching import pad_source  # noqa: E402
from seq2seq.generation.options import GenerationOptions, Guide  # noqa: E402
from seq2seq.generation.search import generate  # noqa: E402
from seq2seq.host import set_threads  # noqa: E402
from seq2seq.metrics import rouge  # noqa: E402
from seq2seq.runs import members  # noqa: E402
from seq2seq.serve import default_generation  # noqa: E402


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", nargs=2, help="two Multi30k run folders (A is the main one)")
    parser.add_argument("--samsum", help="a SAMSum run folder: beam search against MBR on SAMSum test")
    parser.add_argument("--checkpoint", default="best")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64, help="sentences per batch")
    parser.add_argument("--terms", type=int, default=2, help="constraint words per sentence at most")
    parser.add_argument("--sentences", type=int, default=0, help="first N sentences (0 = all)")
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--skip", default="", help="comma-separated parts to leave out: terms,ensemble,mbr")
    parser.add_argument("--out", type=Path, default=Path("outputs/bench_guided"))
    return parser.parse_args()


def data_root() -> Path:
    root = os.environ.get("SEQ2SEQ_DATA")
    if not root:
        sys.exit("set SEQ2SEQ_DATA to the folder that holds multi30k/ and samsum/ (e.g. ../shared/data)")
    return Path(root)


def data() -> tuple[list[str], list[str]]:
    folder = data_root() / "multi30k"
    src = (folder / "test_2016_flickr.en").read_text(encoding="utf-8").splitlines()
    ref = (folder / "test_2016_flickr.de").read_text(encoding="utf-8").splitlines()
    return src, ref


def words(text: str) -> list[str]:
    return [w.strip(".,;:!?\"'()[]") for w in text.split()]


def pick_terms(reference: str, output: str, most: int) -> list[str]:
    """Up to `most` German nouns of the reference (capitalised, 4+ letters, not its first word) missing from
    the output."""
    have = set(words(output))
    picked = []
    for w in words(reference)[1:]:
        if len(w) >= 4 and w[0].isupper() and w.isalpha() and w not in have and w not in picked:
            picked.append(w)
        if len(picked) == most:
            break
    return picked


def decode(model, tokenizer, src_ids, opts, guides, batch: int):
    """Texts and hypotheses in input order, batches of `batch` sentences sorted by source length; seconds (all,
    and of that MBR's selection: the utility matrices)."""
    order = sorted(range(len(src_ids)), key=lambda i: len(src_ids[i]))
    results = [None] * len(src_ids)
    selecting = 0.0
    start = time.perf_counter()
    for b in range(0, len(order), batch):
        chunk = order[b : b + batch]
        src = pad_source([src_ids[i] for i in chunk], max_len=model.max_positions)
        got = generate(model, src, opts, guides=[guides[i] for i in chunk] if guides else None)
        if opts.strategy == "mbr":
            chosen = time.perf_counter()
            got = mbr_select(got, tokenizer, opts)
            selecting += time.perf_counter() - chosen
        for i, hyps in zip(chunk, got):
            results[i] = hyps
    seconds = time.perf_counter() - start
    return tokenizer.decode_tgt([h[0].tokens for h in results]), results, seconds, selecting


def scores(hyps: list[str], refs: list[str]) -> dict:
    return {"bleu": round(sacrebleu.corpus_bleu(hyps, [refs]).score, 2),
            "chrf": round(sacrebleu.corpus_chrf(hyps, [refs]).score, 2)}


def open_members(runs, checkpoint, combine="logprob"):
    settings = BackendSettings(precision="fp32", kernels={"linear": "auto", "onednn_cache_capacity": 16,
                                                          "cache_dir": str(REPO / "outputs" / "cache")},
                               combine=combine)
    models = members(runs, checkpoint)
    generation = models[0].run.generation_settings(default_generation(), [])
    opts = GenerationOptions(**{k: v for k, v in generation.items() if k != "print_alignment"})
    backend = open_backend(models, settings, opts, need_attention=False, sample_texts=None, generation=generation,
                           label="bench")
    return backend, opts


def samsum(args) -> list[dict]:
    """Beam search against MBR (ROUGE-L, chrF utilities) on SAMSum test with the run's generation settings."""
    rows = []
    examples = [json.loads(line) for line in (data_root() / "samsum" / "test.jsonl").read_text("utf-8").splitlines()]
    src, ref = [e["dialogue"] for e in examples], [e["summary"] for e in examples]
    backend, opts = open_members(args.samsum, args.checkpoint)
    model, tok = backend.model, backend.tokenizer
    src_ids = tok.encode_src(src)
    print(f"SAMSum: {len(src)} dialogues, run {args.samsum}, {opts}", flush=True)

    def row(system, texts, seconds, selecting):
        got = rouge(texts, ref, ("rouge1", "rouge2", "rougeL"))
        rows.append({"system": system, **{k: round(v, 2) for k, v in got.items()},
                     "chrf": round(sacrebleu.corpus_chrf(texts, [ref]).score, 2), "seconds": round(seconds, 1),
                     **({"utility seconds": round(selecting, 1)} if selecting else {})})
        print(rows[-1], flush=True)

    texts, _, seconds, selecting = decode(model, tok, src_ids, opts, None, args.batch)
    row(f"SAMSum beam {opts.beam_size}", texts, seconds, selecting)
    for utility, candidates, extra in (("rougeL", "sampling", {"epsilon": 0.02}), ("rougeL", "beam", {}),
                                       ("chrf", "sampling", {"epsilon": 0.02})):
        mbr = dataclasses.replace(opts, strategy="mbr", mbr_candidates=candidates, mbr_samples=args.samples,
                                  mbr_utility=utility, **extra)
        torch.manual_seed(0)
        texts, _, seconds, selecting = decode(model, tok, src_ids, mbr, None, args.batch)
        row(f"SAMSum MBR {utility}, {args.samples} {candidates} candidates", texts, seconds, selecting)
    return rows


def main() -> None:
    args = arguments()
    set_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = samsum(args) if args.samsum else []
    if args.runs:
        rows += multi30k(args)
    (args.out / "results.json").write_text(json.dumps(rows, indent=1) + "\n")
    print(json.dumps(rows, indent=1))


def multi30k(args) -> list[dict]:
    skip = set(filter(None, args.skip.split(",")))
    src, ref = data()
    if args.sentences:
        src, ref = src[: args.sentences], ref[: args.sentences]
    rows = []
    backend, opts = open_members(args.runs[0], args.checkpoint)
    model, tok = backend.model, backend.tokenizer
    src_ids = tok.encode_src(src)
    print(f"{len(src)} sentences, run A {args.runs[0]}, {opts.beam_size=} {opts.len_penalty=} batch {args.batch}, "
          f"{args.threads} threads", flush=True)

    plain, _, plain_s, _ = decode(model, tok, src_ids, opts, None, args.batch)
    rows.append({"system": "A beam 5", **scores(plain, ref), "seconds": round(plain_s, 1)})
    print(rows[-1], flush=True)

    if "terms" not in skip:
        terms = [pick_terms(r, h, args.terms) for r, h in zip(ref, plain)]
        (args.out / "terms.jsonl").write_text("".join(json.dumps(t, ensure_ascii=False) + "\n" for t in terms),
                                              encoding="utf-8")
        guides = [Guide(constraints=tok.encode_tgt(t) if t else []) for t in terms]
        texts, hyps, seconds, _ = decode(model, tok, src_ids, opts, guides, args.batch)
        total = sum(len(t) for t in terms)
        as_word = sum(w in words(h) for t, h in zip(terms, texts) for w in t)
        as_text = sum(w in h for t, h in zip(terms, texts) for w in t)
        unmet = sum(len(h[0].unmet) for h in hyps)
        plain_again, _, plain_again_s, _ = decode(model, tok, src_ids, opts, None, args.batch)  # the time, again
        rows.append({"system": "A beam 5 + terms", **scores(texts, ref), "seconds": round(seconds, 1),
                     "sentences with terms": sum(bool(t) for t in terms), "terms": total,
                     "terms as a word": f"{as_word / total:.1%}", "terms as text": f"{as_text / total:.1%}",
                     "unmet": unmet, "slowdown": round(seconds / min(plain_s, plain_again_s), 2)})
        print(rows[-1], flush=True)
        (args.out / "terms.de").write_text("\n".join(texts) + "\n", encoding="utf-8")

    if "ensemble" not in skip:
        other, _ = open_members(args.runs[1], args.checkpoint)
        texts, _, seconds, _ = decode(other.model, tok, src_ids, opts, None, args.batch)
        rows.append({"system": "B beam 5", **scores(texts, ref), "seconds": round(seconds, 1)})
        print(rows[-1], flush=True)
        for combine in ("logprob", "prob"):
            both, _ = open_members(list(args.runs), args.checkpoint, combine)
            texts, _, seconds, _ = decode(both.model, tok, src_ids, opts, None, args.batch)
            rows.append({"system": f"A + B ({combine})", **scores(texts, ref), "seconds": round(seconds, 1)})
            print(rows[-1], flush=True)

    if "mbr" not in skip:
        for utility, candidates, extra in (("chrf", "sampling", {"epsilon": 0.02}), ("chrf", "beam", {}),
                                           ("bleu", "beam", {})):
            mbr = dataclasses.replace(opts, strategy="mbr", mbr_candidates=candidates, mbr_samples=args.samples,
                                      mbr_utility=utility, **extra)
            torch.manual_seed(0)
            texts, _, seconds, selecting = decode(model, tok, src_ids, mbr, None, args.batch)
            rows.append({"system": f"A MBR {utility}, {args.samples} {candidates} candidates", **scores(texts, ref),
                         "seconds": round(seconds, 1), "utility seconds": round(selecting, 1)})
            print(rows[-1], flush=True)
            (args.out / f"mbr_{utility}_{candidates}.de").write_text("\n".join(texts) + "\n", encoding="utf-8")
    return rows


if __name__ == "__main__":
    main()
