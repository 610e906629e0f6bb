"""Beam search against exhaustive search. On a vocabulary of three emittable pieces and at most three target
tokens there are 39 complete hypotheses; a beam wider than that never fills up before the length limit, so
it must return every allowed hypothesis with its exact score: a pruning, masking or ranking bug (a candidate
dropped, an EOS allowed too early, an n-gram let through, a wrong length normalisation) shows up as a
missing, extra or mis-scored hypothesis."""
from __future__ import annotations

import itertools

import pytest
import torch

from helpers.models import transformer_config
from seq2seq.data.tokenizer import BOS, EOS, UNK
from seq2seq.generation.options import GenerationOptions
from seq2seq.generation.search import generate
from seq2seq.models.model import build_model

VOCAB = 6                 # PAD UNK BOS EOS and two symbols: UNK, 4 and 5 can be emitted
EMITTABLE = (UNK, 4, 5)
MAX_TOKENS = 3            # max_len_a=0, max_len_b=3: EOS is forced after three tokens


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(3)
    m = build_model(transformer_config(layers=1, dim=16, heads=2, ffn=32, max_positions=16), VOCAB, VOCAB).eval()
    with torch.no_grad():  # sharpen the random output layer so that the scores spread out
        m.output_layer.weight.mul_(4.0)
    return m


def repeats_an_ngram(tokens: tuple, n: int) -> bool:
    grams = [tokens[i:i + n] for i in range(len(tokens) - n + 1)]
    return n > 0 and len(grams) != len(set(grams))


def exhaustive(model, src: torch.Tensor, opts: GenerationOptions) -> dict[tuple, tuple[float, float]]:
    """{tokens: (logprob, score)} of every hypothesis the search may return, by forced decoding."""
    out = {}
    for length in range(opts.min_len, MAX_TOKENS + 1):
        for tokens in itertools.product(EMITTABLE, repeat=length):
            if repeats_an_ngram(tokens, opts.no_repeat_ngram_size):
                continue
            prev = torch.tensor([[BOS, *tokens]])
            with torch.no_grad():
                logp = model.scores(src, prev).log_softmax(-1)[0]
            logprob = logp.gather(1, torch.tensor([*tokens, EOS])[:, None]).sum().item()
            out[tokens] = (logprob, logprob / (length + 1) ** opts.len_penalty)
    return out


@pytest.mark.parametrize("len_penalty, min_len, ngram", [
    (1.0, 1, 0), (0.0, 1, 0), (2.0, 1, 0),  # length normalisation: none, per token, strongly favouring length
    (1.0, 2, 0), (1.0, 3, 0),               # EOS forbidden before min_len
    (1.0, 1, 1), (0.0, 1, 2),               # n-gram blocking: no repeated piece / no repeated pair
])
def test_a_wide_beam_returns_exactly_the_exhaustive_hypotheses(model, len_penalty, min_len, ngram):
    src = torch.tensor([[4, 5, 4, EOS]])
    opts = GenerationOptions(beam_size=40, nbest=40, len_penalty=len_penalty, min_len=min_len, max_len_a=0.0,
                             max_len_b=MAX_TOKENS, no_repeat_ngram_size=ngram)
    reference = exhaustive(model, src, opts)
    hyps = generate(model, src, opts)[0]
    found = {tuple(h.tokens): (h.logprob, h.score) for h in hyps}
    assert len(found) == len(hyps)  # no hypothesis twice
    assert set(found) == set(reference)
    for tokens, (logprob, score) in reference.items():
        assert found[tokens] == pytest.approx((logprob, score), abs=1e-4), tokens
    assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)
    best = max(reference, key=lambda t: reference[t][1])
    assert reference[tuple(hyps[0].tokens)][1] == pytest.approx(reference[best][1], abs=1e-6)


@pytest.mark.parametrize("beam_size", [1, 2, 5])
def test_a_narrow_beam_returns_true_scores_of_allowed_hypotheses(model, beam_size):
    """Narrower beams may miss the best hypothesis, but each one they return is allowed and truly scored."""
    src = torch.tensor([[5, 4, EOS]])
    opts = GenerationOptions(beam_size=beam_size, nbest=beam_size, min_len=2, max_len_a=0.0, max_len_b=MAX_TOKENS,
                             no_repeat_ngram_size=1)
    reference = exhaustive(model, src, opts)
    hyps = generate(model, src, opts)[0]
    assert 1 <= len(hyps) <= beam_size
    for h in hyps:
        assert tuple(h.tokens) in reference
        assert (h.logprob, h.score) == pytest.approx(reference[tuple(h.tokens)], abs=1e-4)
