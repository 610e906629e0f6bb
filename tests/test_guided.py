"""Ensembles (seq2seq.generation.ensemble) and forced prefixes (Guide): against the single model and against
forced decoding of the outputs."""
from __future__ import annotations

import copy

import pytest
import torch

from helpers.models import toy_pairs, transformer_config, TOY_SYMBOLS
from seq2seq.data.batching import pad_source
from seq2seq.data.tokenizer import BOS, EOS
from seq2seq.generation.decoding import decode_ids
from seq2seq.generation.ensemble import Ensemble, check_vocabularies
from seq2seq.generation.options import GenerationOptions, Guide
from seq2seq.generation.search import generate
from seq2seq.models.model import build_model


def forced_logprob(model, src_row: torch.Tensor, tokens: list[int]) -> float:
    """log P(tokens + EOS | source) by teacher forcing (one model), or the ensemble's by stepping it."""
    prev = torch.tensor([BOS] + tokens)
    target = tokens + [EOS]
    with torch.no_grad():
        state = model.init_state(model.encode(src_row[None]))
        total = 0.0
        for t, token in enumerate(target):
            logp, state, _ = model.step(prev[t : t + 1], state)
            total += float(logp[0, token])
    return total


@pytest.fixture(scope="module")
def other_model(toy_model):
    """A second, different model over the same vocabulary: the toy model with perturbed weights."""
    torch.manual_seed(0)
    model = copy.deepcopy(toy_model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


OPTIONS = [GenerationOptions(beam_size=4, nbest=2), GenerationOptions(strategy="greedy", beam_size=1)]


@pytest.mark.parametrize("opts", OPTIONS, ids=["beam", "greedy"])
def test_ensemble_of_one_and_of_two_copies_equal_the_model(toy_model, opts):
    src = pad_source([s for s, _ in toy_pairs(10, seed=3)])
    alone = generate(toy_model, src, opts)
    for ensemble in (Ensemble([toy_model]), Ensemble([toy_model, toy_model]),
                     Ensemble([toy_model, toy_model], combine="prob")):
        together = generate(ensemble, src, opts)
        for a, b in zip(alone, together):
            assert [h.tokens for h in a] == [h.tokens for h in b]
            assert [h.logprob for h in a] == pytest.approx([h.logprob for h in b], abs=1e-4)


def test_weights_one_and_zero_equal_the_first(toy_model, other_model):
    src = pad_source([s for s, _ in toy_pairs(10, seed=4)])
    opts = GenerationOptions(beam_size=3, nbest=3)
    for first, second in ((toy_model, other_model), (other_model, toy_model)):
        alone = generate(first, src, opts)
        weighted = generate(Ensemble([first, second], weights=[1.0, 0.0]), src, opts)
        assert [[h.tokens for h in x] for x in alone] == [[h.tokens for h in x] for x in weighted]


@pytest.mark.parametrize("combine", ["logprob", "prob"])
def test_ensemble_step_combines_the_members(toy_model, other_model, combine):
    src = pad_source([s for s, _ in toy_pairs(4, seed=5)])
    ensemble = Ensemble([toy_model, other_model], weights=[3.0, 1.0], combine=combine)
    last = torch.full((src.size(0),), BOS)
    with torch.no_grad():
        logp, _, _ = ensemble.step(last, ensemble.init_state(ensemble.encode(src)))
        a, _, _ = toy_model.step(last, toy_model.init_state(toy_model.encode(src)))
        b, _, _ = other_model.step(last, other_model.init_state(other_model.encode(src)))
    expected = (torch.log_softmax(0.75 * a + 0.25 * b, dim=-1) if combine == "logprob"
                else torch.log(0.75 * a.exp() + 0.25 * b.exp()))
    torch.testing.assert_close(logp, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(a, b, atol=1e-3), "the two members must differ for this test to mean anything"


def test_ensemble_beam_scores_equal_its_forced_decoding(toy_model, other_model):
    src = pad_source([s for s, _ in toy_pairs(6, seed=6)])
    ensemble = Ensemble([toy_model, other_model])
    for row, hyps in enumerate(generate(ensemble, src, GenerationOptions(beam_size=4, nbest=4))):
        for h in hyps:
            assert h.logprob == pytest.approx(forced_logprob(ensemble, src[row], h.tokens), abs=1e-3)


def test_ensemble_refuses_bad_weights_and_vocabularies(toy_model, tmp_path):
    with pytest.raises(ValueError, match="2 weights for 3 models"):
        Ensemble([toy_model] * 3, weights=[1, 1])
    with pytest.raises(ValueError, match="not all 0"):
        Ensemble([toy_model] * 2, weights=[0, 0])
    with pytest.raises(ValueError, match="ensemble.combine=mean"):
        Ensemble([toy_model] * 2, combine="mean")

    class Pieces:
        def __init__(self, pieces):
            self.pieces = pieces

        def get_piece_size(self):
            return len(self.pieces)

        def id_to_piece(self, i):
            return self.pieces[i]

    class Tok:
        def __init__(self, src, tgt, newline_piece=None):
            self.src, self.tgt, self.newline_piece = Pieces(src), Pieces(tgt), newline_piece

    same = Tok(["a", "b"], ["x", "y"])
    check_vocabularies([same, Tok(["a", "b"], ["x", "y"])], ["one", "two"])
    with pytest.raises(ValueError, match="target vocabularies differ .*id 1 is 'y' in one and 'z'"):
        check_vocabularies([same, Tok(["a", "b"], ["x", "z"])], ["one", "two"])
    with pytest.raises(ValueError, match="source vocabularies differ"):
        check_vocabularies([same, Tok(["a", "c"], ["x", "y"])], ["one", "two"])


@pytest.mark.parametrize("opts", [GenerationOptions(beam_size=4, nbest=3), GenerationOptions(strategy="greedy", beam_size=1),
                                  GenerationOptions(strategy="sampling", beam_size=1, nbest=3, top_k=5)],
                         ids=["beam", "greedy", "sampling"])
def test_prefix_is_kept_and_scored_as_forced_decoding(toy_model, opts):
    pairs = toy_pairs(8, seed=7)
    src = pad_source([s for s, _ in pairs])
    # prefixes that the model would not choose itself (the reversal starts with the source's last symbol),
    # of mixed lengths, one row without
    prefixes = [[4 + (s[-1] - 3) % TOY_SYMBOLS, 5][: 1 + i % 2] for i, (s, _) in enumerate(pairs)]
    prefixes[3] = []
    guides = [Guide(prefix=p) for p in prefixes]
    torch.manual_seed(0)
    results = generate(toy_model, src, opts, guides=guides, generator=torch.Generator().manual_seed(1))
    plain = generate(toy_model, src[3:4], opts, generator=torch.Generator().manual_seed(1))
    for row, (hyps, prefix) in enumerate(zip(results, prefixes)):
        for h in hyps:
            assert h.tokens[: len(prefix)] == prefix
            assert h.logprob == pytest.approx(forced_logprob(toy_model, src[row], h.tokens), abs=1e-3)
    if opts.strategy != "sampling":
        assert [h.tokens for h in results[3]] == [h.tokens for h in plain[0]]


def test_prefix_longer_than_the_length_limit_is_kept_whole(toy_model):
    src = pad_source([[4, 5]])
    opts = GenerationOptions(beam_size=2, max_len_a=0.0, max_len_b=1)
    prefix = [6, 7, 8, 9]
    hyps = generate(toy_model, src, opts, guides=[Guide(prefix=prefix)])
    assert hyps[0][0].tokens == prefix  # the limit is raised to the prefix, then EOS


def test_decode_ids_with_prefixes_keeps_order_and_refuses_too_long_ones(toy_model):
    pairs = toy_pairs(5, seed=8)
    src_ids = [s for s, _ in pairs] + [[]]
    guides = [Guide(prefix=[5]), Guide(), Guide(prefix=[6, 7]), Guide(), Guide(prefix=[8]), Guide(prefix=[9])]
    opts = GenerationOptions(beam_size=3)
    out = decode_ids(toy_model, src_ids, opts, batch_tokens=12, device=torch.device("cpu"), guides=guides)
    for hyps, guide in zip(out, guides):
        assert hyps[0].tokens[: len(guide.prefix)] == guide.prefix
    assert out[5][0].tokens[:1] == [9]  # an empty source with a prefix is decoded, not skipped
    with pytest.raises(ValueError, match="line 2: the prefix has 70 subwords"):
        decode_ids(toy_model, src_ids[:2], opts, batch_tokens=100, device=torch.device("cpu"),
                   guides=[Guide(), Guide(prefix=[5] * 70)])


# ---------------------------------------------------------------- lexically constrained beam search
def contains(tokens: list[int], phrase: list[int]) -> bool:
    return any(tokens[i : i + len(phrase)] == phrase for i in range(len(tokens) - len(phrase) + 1))


def mixed_constraints(n: int, seed: int) -> list[list[list[int]]]:
    """0, 1 or 2 phrases of 1-2 symbols per sentence, symbols the reversal may not contain."""
    import random

    rng = random.Random(seed)
    return [[[rng.randrange(4, 4 + TOY_SYMBOLS) for _ in range(rng.randint(1, 2))] for _ in range(i % 3)]
            for i in range(n)]


@pytest.mark.parametrize("batch", [1, 3, 16])
def test_every_constraint_appears_in_every_output_for_any_batch_size(toy_model, batch):
    pairs = toy_pairs(16, seed=13)
    phrases = mixed_constraints(16, seed=batch)
    opts = GenerationOptions(beam_size=4, nbest=4, max_len_b=16)
    results = []
    for start in range(0, 16, batch):
        src = pad_source([s for s, _ in pairs[start : start + batch]])
        results += generate(toy_model, src, opts, guides=[Guide(constraints=c) for c in phrases[start : start + batch]])
    assert any(len(c) == 2 for c in phrases) and any(not c for c in phrases)
    for hyps, cons in zip(results, phrases):
        for h in hyps:
            assert h.unmet == () and all(contains(h.tokens, p) for p in cons), (h.tokens, cons)


def test_constrained_sentences_alone_equal_them_in_a_batch_and_scores_equal_forced_decoding(toy_model):
    pairs = toy_pairs(12, seed=14)
    phrases = mixed_constraints(12, seed=2)
    src = pad_source([s for s, _ in pairs])
    opts = GenerationOptions(beam_size=4, nbest=3, max_len_b=16)
    together = generate(toy_model, src, opts, guides=[Guide(constraints=c) for c in phrases])
    plain = generate(toy_model, src, opts)
    for row, (hyps, cons) in enumerate(zip(together, phrases)):
        alone = generate(toy_model, pad_source([pairs[row][0]]), opts, guides=[Guide(constraints=cons)])[0]
        assert [h.tokens for h in alone] == [h.tokens for h in hyps]
        if not cons:  # a sentence without phrases in a constrained batch: plain beam search
            assert [h.tokens for h in hyps] == [h.tokens for h in plain[row]]
        for h in hyps:
            assert h.logprob == pytest.approx(forced_logprob(toy_model, src[row], h.tokens), abs=1e-3)


def test_no_constraints_is_plain_beam_search(toy_model):
    src = pad_source([s for s, _ in toy_pairs(8, seed=15)])
    opts = GenerationOptions(beam_size=3, nbest=3)
    plain = generate(toy_model, src, opts)
    empty = generate(toy_model, src, opts, guides=[Guide() for _ in range(8)])
    assert [[h.tokens for h in x] for x in plain] == [[h.tokens for h in x] for x in empty]


def test_ordered_constraints_appear_in_order(toy_model):
    pairs = toy_pairs(8, seed=16)
    src = pad_source([s for s, _ in pairs])
    phrases = [[[s[0]], [s[-1]]] for s, _ in pairs]  # the reversal has them the other way round
    opts = GenerationOptions(beam_size=4, max_len_b=16, constraints_ordered=True)
    for (s, _), hyps in zip(pairs, generate(toy_model, src, opts, guides=[Guide(constraints=c) for c in phrases])):
        tokens = hyps[0].tokens
        first = tokens.index(s[0])
        assert s[-1] in tokens[first + 1:], (s, tokens)


def test_an_unreachable_constraint_is_reported_and_the_output_kept(toy_model):
    src = pad_source([[4, 5, 6]])
    opts = GenerationOptions(beam_size=3, max_len_a=0.0, max_len_b=4)
    hyps = generate(toy_model, src, opts, guides=[Guide(constraints=[[7], [8, 9, 10, 11, 12]])])[0]
    assert hyps and hyps[0].unmet == (1,) and 7 in hyps[0].tokens and len(hyps[0].tokens) <= 4


def test_constraints_are_exempt_from_ngram_blocking_and_work_with_prefixes(toy_model):
    src = pad_source([[4, 5, 6, 7]])
    opts = GenerationOptions(beam_size=4, no_repeat_ngram_size=1, max_len_b=12)
    hyps = generate(toy_model, src, opts, guides=[Guide(prefix=[9], constraints=[[6, 6]])])[0]
    assert hyps[0].tokens[0] == 9 and contains(hyps[0].tokens, [6, 6])
    with pytest.raises(ValueError, match="constraints need beam search"):
        generate(toy_model, src, GenerationOptions(strategy="greedy", beam_size=1), guides=[Guide(constraints=[[5]])])


def test_constraints_with_a_copy_model():
    from test_copy import copy_task, rnn_copy_config

    torch.manual_seed(0)
    model = build_model(rnn_copy_config(), 30, 30)
    model = train_copy(model)
    pairs = copy_task(6, seed=3, names=True)
    src = pad_source([s for s, _ in pairs])
    phrases = [[[24 + i % 6]] for i in range(6)]  # unseen "names", perhaps not in the source
    opts = GenerationOptions(beam_size=4, max_len_b=12)
    for row, hyps in enumerate(generate(model, src, opts, guides=[Guide(constraints=c) for c in phrases])):
        assert contains(hyps[0].tokens, phrases[row][0])
        assert hyps[0].logprob == pytest.approx(forced_logprob(model, src[row], hyps[0].tokens), abs=1e-3)


def train_copy(model):
    from helpers.models import train_toy_model
    from test_copy import copy_task

    return train_toy_model(model, steps=60, lr=3e-3, pairs=copy_task(60 * 64, seed=1, names=True))


FAMILIES = [("lstm", "bahdanau"), ("lstm", "luong_general"), ("gru", "luong_local_m"), ("lstm", "luong_local_p"),
            ("gru", "multihead"), ("lstm", "copy")]


@pytest.mark.parametrize("cell,attention", FAMILIES, ids=[f"{c}-{a}" for c, a in FAMILIES])
def test_every_decoder_family_takes_constraints_prefixes_ensembles_and_mbr(toy_model, cell, attention):
    """An untrained RNN of each family (and the copy model) over the toy vocabulary: each guided output keeps
    its prefix and phrases and scores as its forced decoding; the family ensembled with the Transformer, and
    MBR over its samples, choose hypotheses whose log-probabilities are forced decoding's too."""
    from test_copy import rnn_copy_config
    from test_rnn_attention import rnn_config

    from seq2seq.generation.mbr import select

    torch.manual_seed(1)
    config = (rnn_copy_config(dim=32, hidden=64) if attention == "copy"
              else rnn_config(attention, dim=32, hidden=64, cell=cell, encoder=cell))
    model = build_model(config, 4 + TOY_SYMBOLS, 4 + TOY_SYMBOLS).eval()
    rows = [[4, 5, 6, 7, 8], [9, 10, 11], [12, 13, 4, 5, 6, 7], [8, 8, 9]]
    src = pad_source(rows)
    guides = [Guide(prefix=[11], constraints=[[6, 7]]), Guide(), Guide(constraints=[[13], [5, 5]]),
              Guide(prefix=[4, 4])]
    opts = GenerationOptions(beam_size=4, max_len_b=10)
    ensemble = Ensemble([toy_model, model], weights=[0.5, 0.5])
    for decoder in (model, ensemble):
        results = generate(decoder, src, opts, guides=guides)
        for row, (guide, hyps) in enumerate(zip(guides, results)):
            best = hyps[0]
            assert best.tokens[: len(guide.prefix)] == guide.prefix and not best.unmet
            assert all(contains(best.tokens, phrase) for phrase in guide.constraints)
            assert best.logprob == pytest.approx(forced_logprob(decoder, src[row], best.tokens), abs=1e-3)
    torch.manual_seed(0)
    mbr = GenerationOptions(strategy="mbr", beam_size=4, mbr_samples=8, epsilon=0.02, max_len_b=10)
    for row, candidates in enumerate(generate(model, src, mbr)):
        assert len(candidates) == 8
        (chosen,) = select(candidates, [" ".join(map(str, h.tokens)) for h in candidates], "chrf")
        assert chosen.tokens in [h.tokens for h in candidates]
        assert chosen.logprob == pytest.approx(forced_logprob(model, src[row], chosen.tokens), abs=1e-3)
