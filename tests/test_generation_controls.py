"""Decoding controls: n-gram blocking, repetition and coverage penalties, relative minimum length,
honest log-probabilities under all of them, and the refusal of impossible settings."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
import yaml

from helpers.models import TOY_SYMBOLS, toy_pairs, transformer_config
from seq2seq.data.batching import pad_source
from seq2seq.data.tokenizer import BOS, EOS, PAD
from seq2seq.generation.controls import block_ngrams, penalise
from seq2seq.generation.options import GenerationOptions
from seq2seq.generation.search import generate
from seq2seq.models.model import build_model

V = 4 + TOY_SYMBOLS
CONF = Path(__file__).resolve().parents[1] / "conf" / "generation"


@pytest.fixture(scope="module")
def untrained_model():
    """An untrained Transformer: it repeats tokens, which gives the controls something to do."""
    torch.manual_seed(0)
    return build_model(transformer_config(), V, V).eval()


@pytest.fixture(scope="module")
def sources():
    return pad_source([s for s, _ in toy_pairs(40, seed=1)])


def repeated_ngram(tokens: list[int], n: int) -> bool:
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return len(grams) != len(set(grams))


def forced_logprob(model, src_row: torch.Tensor, tokens: list[int]) -> float:
    """log P(tokens + EOS | source) by teacher forcing (src_row [1, S])."""
    prev = torch.tensor([[BOS] + tokens])
    target = torch.tensor(tokens + [EOS])
    with torch.no_grad():
        logp = model.scores(src_row, prev).log_softmax(-1)[0]
    return logp.gather(1, target[:, None]).sum().item()


def options(strategy: str, **kw) -> GenerationOptions:
    beam = {"beam": 4, "greedy": 1, "sampling": 1}[strategy]
    nbest = {"beam": 4, "greedy": 1, "sampling": 3}[strategy]
    return GenerationOptions(strategy=strategy, beam_size=beam, nbest=nbest, **kw)


def run(model, src, opts, **kw):
    generator = torch.Generator().manual_seed(3) if opts.strategy == "sampling" else None
    return generate(model, src, opts, generator=generator, **kw)


def best_tokens(results) -> list[list[int]]:
    return [hyps[0].tokens for hyps in results]


# ---------------------------------------------------------------- no_repeat_ngram_size
@pytest.mark.parametrize("strategy", ["beam", "greedy", "sampling"])
def test_no_repeat_ngram_size_never_repeats_a_trigram(untrained_model, sources, strategy):
    plain = run(untrained_model, sources, options(strategy))
    assert sum(repeated_ngram(h.tokens, 3) for hyps in plain for h in hyps) > 10  # the model does repeat
    blocked = run(untrained_model, sources, options(strategy, no_repeat_ngram_size=3))
    for hyps in blocked:
        assert hyps
        for h in hyps:
            assert not repeated_ngram(h.tokens, 3), h.tokens


def test_block_ngrams_matches_a_plain_loop():
    gen = torch.Generator().manual_seed(0)
    for n in (1, 2, 3, 4):
        for t in (0, 1, 3, 6, 12):
            history = torch.randint(4, 8, (9, t), generator=gen)  # few symbols: many matches
            scores = torch.zeros(9, 10)
            block_ngrams(scores, history, n)
            for row in range(9):
                h = history[row].tolist()
                banned = set()
                if len(h) >= n:
                    context = h[len(h) - n + 1 :] if n > 1 else []
                    for j in range(len(h) - n + 1):
                        if h[j : j + n - 1] == context:
                            banned.add(h[j + n - 1])
                got = {i for i in range(10) if scores[row, i] == -math.inf} - {PAD}
                assert got == banned, (n, h)


def test_blocking_dead_end_ends_the_hypothesis_without_repeating(untrained_model, sources):
    """Unigram blocking over 11 emittable ids (UNK and 10 symbols) with min_len 15: every one is used
    up before min_len, so the hypothesis ends there (with EOS's true log-probability) rather than repeat."""
    for strategy in ("beam", "greedy"):
        results = run(untrained_model, sources[:6], options(strategy, no_repeat_ngram_size=1, min_len=15,
                                                           max_len_a=0.0, max_len_b=20))
        assert any(len(h.tokens) == V - 3 for hyps in results for h in hyps), strategy  # a dead end was reached
        for row, hyps in enumerate(results):
            assert hyps
            for h in hyps:
                assert len(h.tokens) == len(set(h.tokens)) <= V - 3  # all but PAD, BOS, EOS
                assert h.logprob == pytest.approx(forced_logprob(untrained_model, sources[row : row + 1], h.tokens),
                                                  abs=1e-3)


# ---------------------------------------------------------------- repetition_penalty
def test_repetition_penalty_multiplies_log_probabilities_of_seen_tokens():
    logp = torch.log_softmax(torch.randn(2, 8, generator=torch.Generator().manual_seed(1)), dim=1)
    history = torch.tensor([[4, 4, 6], [7, 5, 7]])
    opts = GenerationOptions(repetition_penalty=1.5)
    scores = penalise(logp.clone(), history, opts, None)
    expected = logp.clone()
    for row, seen in enumerate(([4, 6], [5, 7])):
        expected[row, seen] *= 1.5
    torch.testing.assert_close(scores, expected)
    assert not (scores > logp).any()  # never encourages


# ---------------------------------------------------------------- honest scores
@pytest.mark.parametrize("strategy", ["beam", "greedy", "sampling"])
@pytest.mark.parametrize("controls", [
    {"no_repeat_ngram_size": 3},
    {"repetition_penalty": 3.0},
    {"no_repeat_ngram_size": 2, "repetition_penalty": 1.5, "min_len_a": 1.0, "len_penalty": 0.6},
])
def test_logprob_equals_forced_decoding_under_controls(untrained_model, sources, strategy, controls):
    src = sources[:10]
    opts = options(strategy, **controls)
    for row, hyps in enumerate(run(untrained_model, src, opts)):
        assert len(hyps) == opts.nbest
        assert [h.score for h in hyps] == sorted([h.score for h in hyps], reverse=True)
        for h in hyps:
            assert h.logprob == pytest.approx(forced_logprob(untrained_model, src[row : row + 1], h.tokens), abs=1e-3)
            assert h.score == pytest.approx(h.logprob / (len(h.tokens) + 1) ** opts.len_penalty, abs=1e-5)


def test_coverage_penalty_equals_hand_computation(untrained_model, sources):
    """At most 3 target steps (2 tokens and EOS) spread 3 units of attention over sources of 4 or more
    positions, so every hypothesis leaves some position under-covered (sum < 1): the penalty is never 0."""
    beta, penalised = 0.7, 0
    model = untrained_model
    opts = GenerationOptions(beam_size=4, nbest=4, coverage_penalty=beta, len_penalty=0.8, max_len_a=0.0, max_len_b=2)
    results = generate(model, sources[:12], opts, need_attention=True)
    for row, hyps in enumerate(results):
        src_len = int(sources[row].ne(PAD).sum())
        for h in hyps:
            assert h.attention.shape == (len(h.tokens) + 1, src_len)  # real source positions only
            covered = h.attention.sum(dim=0).clamp(max=1.0)
            cp = beta * covered.log().sum().item()
            penalised += cp < -1e-3
            assert h.score == pytest.approx(h.logprob / (len(h.tokens) + 1) ** 0.8 + cp, abs=1e-4)
            assert h.logprob == pytest.approx(forced_logprob(model, sources[row : row + 1], h.tokens), abs=1e-3)
        assert [h.score for h in hyps] == sorted([h.score for h in hyps], reverse=True)
    assert penalised >= 12  # the penalty was really applied, not zero everywhere


def test_coverage_penalty_without_returned_attention_gives_the_same_hypotheses(toy_model, sources):
    opts = GenerationOptions(beam_size=4, nbest=4, coverage_penalty=1.0)
    with_attn = generate(toy_model, sources[:8], opts, need_attention=True)
    without = generate(toy_model, sources[:8], opts)
    for a, b in zip(with_attn, without):
        assert [h.tokens for h in a] == [h.tokens for h in b]
        assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-5)
        assert all(h.attention is None for h in b)


@pytest.mark.parametrize("controls", [
    {"coverage_penalty": 1.0},
    {"no_repeat_ngram_size": 2, "repetition_penalty": 2.0},
])
def test_sentence_alone_equals_sentence_in_padded_batch_with_controls(toy_model, untrained_model, controls):
    srcs = [s for s, _ in toy_pairs(10, seed=21, min_len=1, max_len=14)]
    opts = GenerationOptions(beam_size=4, **controls)
    for model in (toy_model, untrained_model):
        batched = generate(model, pad_source(srcs), opts)
        for s, hyps in zip(srcs, batched):
            alone = generate(model, pad_source([s]), opts)[0]
            assert alone[0].tokens == hyps[0].tokens
            assert alone[0].score == pytest.approx(hyps[0].score, abs=1e-4)


# ---------------------------------------------------------------- every key does something
def test_each_control_changes_the_output(toy_model, untrained_model, sources):
    def changed(model, strategy, **kw):
        base = best_tokens(run(model, sources, options(strategy)))
        return sum(a != b for a, b in zip(base, best_tokens(run(model, sources, options(strategy, **kw)))))

    for strategy in ("beam", "greedy", "sampling"):
        assert changed(untrained_model, strategy, no_repeat_ngram_size=3) > 0, strategy
    assert changed(untrained_model, "beam", repetition_penalty=3.0) > 0
    assert changed(untrained_model, "greedy", repetition_penalty=10.0) > 0
    assert changed(untrained_model, "sampling", repetition_penalty=10.0) > 0
    assert changed(toy_model, "beam", coverage_penalty=5.0) > 0
    for strategy in ("beam", "greedy"):
        assert changed(toy_model, strategy, min_len_a=2.0) > 0, strategy


def test_min_len_a_is_relative_and_capped_at_the_maximum(toy_model):
    srcs = [s for s, _ in toy_pairs(12, seed=4, min_len=2, max_len=8)]
    src = pad_source(srcs)
    for strategy in ("beam", "greedy"):
        opts = GenerationOptions(strategy=strategy, beam_size=3 if strategy == "beam" else 1,
                                 min_len_a=1.5, max_len_a=1.2, max_len_b=3)
        results = generate(toy_model, src, opts)
        for s, hyps in zip(srcs, results):
            most = math.floor(1.2 * len(s) + 3)
            least = min(math.floor(1.5 * len(s)), most)
            assert least <= len(hyps[0].tokens) <= most
    # the minimum above every maximum: each sentence is exactly at its maximum, honestly scored
    opts = GenerationOptions(beam_size=3, nbest=3, min_len_a=5.0, max_len_a=1.0, max_len_b=1)
    results = generate(toy_model, src, opts)
    for row, (s, hyps) in enumerate(zip(srcs, results)):
        for h in hyps:
            assert len(h.tokens) == len(s) + 1
            assert h.logprob == pytest.approx(forced_logprob(toy_model, src[row : row + 1], h.tokens), abs=1e-3)


@pytest.mark.parametrize("strategy", ["beam", "greedy"])
def test_forced_eos_keeps_its_true_logprob_when_min_len_exceeds_the_model(toy_model, strategy):
    """min_len beyond max_positions - 1: the minimum is capped there, and the forced EOS is not free."""
    src = pad_source([[4, 5, 6]])
    limit = toy_model.max_positions - 1
    opts = GenerationOptions(strategy=strategy, beam_size=2 if strategy == "beam" else 1, min_len=limit + 20,
                             max_len=limit + 40, max_len_a=0.0, max_len_b=limit + 30)
    h = generate(toy_model, src, opts)[0][0]
    assert len(h.tokens) == limit
    forced = forced_logprob(toy_model, src, h.tokens)
    assert h.logprob == pytest.approx(forced, abs=1e-3)


@pytest.mark.parametrize("controls", [
    {"no_repeat_ngram_size": 3},
    {"repetition_penalty": 3.0},
    {"no_repeat_ngram_size": 2, "repetition_penalty": 10.0},
])
def test_beam_one_equals_greedy_with_controls(toy_model, untrained_model, sources, controls):
    for model in (toy_model, untrained_model):
        greedy = generate(model, sources, GenerationOptions(strategy="greedy", beam_size=1, **controls))
        beam = generate(model, sources, GenerationOptions(strategy="beam", beam_size=1, **controls))
        for g, b in zip(greedy, beam):
            assert g[0].tokens == b[0].tokens
            assert g[0].logprob == pytest.approx(b[0].logprob, abs=1e-4)


def test_defaults_leave_search_unchanged(toy_model, sources):
    """The controls at their defaults are the plain search: the defaults are the off values, and a control set
    to its off value explicitly gives the hypotheses of a search that never looks at it (beam_search with the
    controls' code paths forced on changes nothing either when they are neutral)."""
    defaults = GenerationOptions()
    assert (defaults.no_repeat_ngram_size, defaults.repetition_penalty, defaults.coverage_penalty,
            defaults.min_len_a) == (0, 1.0, 0.0, 0.0)
    assert not defaults.penalised
    plain = generate(toy_model, sources[:8], GenerationOptions(beam_size=4, nbest=4))
    # n-gram blocking of 9-grams cannot block anything in these short outputs, but runs the penalised path
    blocked = generate(toy_model, sources[:8], GenerationOptions(beam_size=4, nbest=4, no_repeat_ngram_size=9))
    assert GenerationOptions(no_repeat_ngram_size=9).penalised
    for a, b in zip(plain, blocked):
        assert max(len(h.tokens) for h in a) < 9
        assert [h.tokens for h in a] == [h.tokens for h in b]
        assert [h.logprob for h in a] == pytest.approx([h.logprob for h in b], abs=1e-6)
        assert all(h.score == pytest.approx(h.logprob / (len(h.tokens) + 1), abs=1e-6) for h in a)


# ---------------------------------------------------------------- refusals and configs
@pytest.mark.parametrize("settings,key", [
    ({"min_len": 20, "max_len": 10}, "generation.min_len=20 is more than generation.max_len=10"),
    ({"beam_size": 3, "nbest": 4}, "generation.nbest=4"),
    ({"no_repeat_ngram_size": -1}, "generation.no_repeat_ngram_size"),
    ({"repetition_penalty": 0.0}, "generation.repetition_penalty"),
    ({"repetition_penalty": -1.2}, "generation.repetition_penalty"),
    ({"coverage_penalty": -0.1}, "generation.coverage_penalty"),
    ({"strategy": "greedy", "beam_size": 1, "coverage_penalty": 0.2},
     "generation.coverage_penalty=0.2 .*strategy=beam"),
    ({"strategy": "sampling", "beam_size": 1, "coverage_penalty": 0.2}, "generation.coverage_penalty"),
    ({"temperature": 0.0}, "generation.temperature"),
    ({"temperature": -1.0}, "generation.temperature"),
    ({"top_p": 0.0}, "generation.top_p"),
    ({"top_p": 1.5}, "generation.top_p"),
    ({"top_k": -1}, "generation.top_k"),
    ({"beam_size": 0, "nbest": 0}, "generation.beam_size=0"),
    ({"max_len": 0, "min_len": 0}, "generation.max_len=0"),
    ({"min_len_a": -0.5}, "generation.min_len_a"),
    ({"strategy": "sampling", "beam_size": 1, "nbest": 0}, "generation.nbest=0"),
])
def test_impossible_settings_are_refused(settings, key):
    with pytest.raises(ValueError, match=key):
        GenerationOptions(**settings)


def test_generation_configs_name_every_option():
    fields = {f.name for f in dataclasses.fields(GenerationOptions)}
    text = (CONF / "beam.yaml").read_text()  # the one file that explains them; greedy and sampling extend it
    assert set(yaml.safe_load(text)) == fields
    for key in ("no_repeat_ngram_size", "repetition_penalty", "coverage_penalty", "min_len_a"):
        line = next(line for line in text.splitlines() if line.startswith(f"{key}:"))
        assert "#" in line, f"beam.yaml: {key} has no comment"
    from hydra import compose, initialize_config_dir

    for name in ("beam", "greedy", "sampling"):
        with initialize_config_dir(config_dir=str(CONF.parent), version_base="1.3"):
            settings = dict(compose("decode", overrides=["run=x", f"generation={name}"]).generation)
        assert set(settings) == fields, name
        opts = GenerationOptions(**settings)
        assert not opts.penalised and opts.coverage_penalty == 0.0 and opts.min_len_a == 0.0
