"""The pointer-generator and coverage: the distribution, its limits, copying unseen names, search, the losses."""
from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from helpers.models import train_toy_model, transformer_config
from seq2seq.data.batching import collate, pad_source
from seq2seq.data.tokenizer import BOS, EOS, PAD
from seq2seq.generation.options import GenerationOptions
from seq2seq.generation.search import generate
from seq2seq.models.copy import _FusedCopyLoss, first_occurrences
from seq2seq.models.model import AttentionChoice, build_model, coverage_loss
from seq2seq.models.output import smoothed_nll

VOCAB = 30
SEEN = range(4, 24)     # tokens of the training data
UNSEEN = range(24, 30)  # "names" that never occur in training
POINTER = {"_target_": "seq2seq.models.copy.PointerGenerator", "name": "pointer_generator",
           "attention_layer": -1, "attention_head": -1}


def rnn_copy_config(copy: bool = True, coverage: bool = False, dim: int = 48, hidden: int = 96,
                    timing: str = "previous") -> dict:
    """A bidirectional LSTM encoder and an LSTM decoder with Bahdanau attention (the See et al. layout;
    timing=current: the attention reads the state after the step, as in their eq. 1)."""
    return {
        "embed_dim": dim, "dropout": 0.0, "max_positions": 64, "share_embeddings": True, "tie_output": True,
        "encoder": {"_target_": "seq2seq.models.rnn_encoder.RNNEncoder", "name": "lstm", "cell": "lstm", "layers": 1,
                    "hidden_size": hidden // 2, "bidirectional": True, "dropout": 0.0},
        "decoder": {"_target_": "seq2seq.models.rnn.RNNDecoder", "name": "rnn", "cell": "lstm", "layers": 1,
                    "hidden_size": hidden, "dropout": 0.0, "input_feeding": False, "bridge": "learned"},
        "attention": {"_target_": "seq2seq.models.bahdanau.BahdanauAttention", "name": "bahdanau", "hidden_dim": 0,
                      "coverage": coverage, "timing": timing},
        **({"output": POINTER} if copy else {}),
    }


def transformer_copy_config(**keys) -> dict:
    return {**transformer_config(**keys), "output": POINTER}


def copy_task(n: int, seed: int, names: bool) -> list[tuple[list[int], list[int]]]:
    """Target = source. With names, one token of each source is an unseen name."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        src = [rng.choice(SEEN) for _ in range(rng.randint(3, 7))]
        if names:
            src[rng.randrange(len(src))] = rng.choice(UNSEEN)
        pairs.append((src, list(src)))
    return pairs


def batch_of(pairs):
    return collate([s for s, _ in pairs], [t for _, t in pairs])


_TRAINED: dict[str, torch.nn.Module] = {}


def trained(kind: str) -> torch.nn.Module:
    """'rnn', 'rnn_current', 'rnn_nocopy', 'transformer': trained on the copy task without names (once per session)."""
    if kind not in _TRAINED:
        torch.manual_seed(0)
        config = {"rnn": rnn_copy_config(), "rnn_nocopy": rnn_copy_config(copy=False),
                  "rnn_current": rnn_copy_config(coverage=True, timing="current"),
                  "transformer": transformer_copy_config(layers=2, dim=64)}[kind]
        model = build_model(config, VOCAB, VOCAB)
        _TRAINED[kind] = train_toy_model(model, steps=300, batch_size=64, lr=5e-3,
                                         pairs=copy_task(300 * 64, seed=1, names=False))
    return _TRAINED[kind]


@pytest.mark.parametrize("config", [rnn_copy_config(), transformer_copy_config()], ids=["rnn", "transformer"])
def test_pointer_generator_is_a_distribution(config):
    torch.manual_seed(0)
    model = build_model(config, VOCAB, VOCAB).eval()
    batch = batch_of(copy_task(6, seed=3, names=True))
    with torch.no_grad():
        logp = model.scores(batch.src, batch.prev_tokens)
    torch.testing.assert_close(logp.exp().sum(-1), torch.ones(logp.shape[:2]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("config", [rnn_copy_config(), transformer_copy_config()], ids=["rnn", "transformer"])
def test_p_gen_zero_is_the_scattered_attention_and_one_the_softmax(config):
    torch.manual_seed(0)
    model = build_model(config, VOCAB, VOCAB).eval()
    pg = model.output_layer
    batch = batch_of(copy_task(5, seed=4, names=True))
    enc = model.encode(batch.src)
    with torch.no_grad():
        out = model.decoder(batch.prev_tokens, enc, pg.attention_choice)
        scattered = torch.zeros(*out.attention.shape[:2], VOCAB).scatter_add_(
            -1, batch.src[:, None, :].expand_as(out.attention), out.attention)
        softmax = torch.log_softmax(out.features @ pg.vocab.weight.t(), dim=-1)
        pg.gate.weight.zero_()
        pg.gate.bias.fill_(-1e4)  # p_gen = 0, and saturated: no NaN
        only_copy = model.scores(batch.src, batch.prev_tokens)
        pg.gate.bias.fill_(1e4)   # p_gen = 1
        only_generate = model.scores(batch.src, batch.prev_tokens)
    torch.testing.assert_close(only_copy.exp(), scattered, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(only_generate, softmax, atol=1e-5, rtol=1e-5)
    assert torch.isfinite(only_generate).all()


def test_saturated_p_gen_gives_finite_loss_and_gradients():
    torch.manual_seed(0)
    model = build_model(transformer_copy_config(), VOCAB, VOCAB)
    batch = batch_of(copy_task(4, seed=5, names=False))
    for bias in (-1e4, 1e4):
        with torch.no_grad():
            model.output_layer.gate.bias.fill_(bias)
        model.zero_grad()
        out = model(batch.src, batch.prev_tokens, batch.target, label_smoothing=0.1)
        out.loss.backward()
        assert torch.isfinite(out.loss)
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("config", [rnn_copy_config(coverage=True), transformer_copy_config()],
                         ids=["rnn", "transformer"])
def test_chunked_copy_loss_equals_plain_autograd(config):
    torch.manual_seed(0)
    model = build_model(config, VOCAB, VOCAB)
    model.output_layer.chunk = 5  # several chunks, the last one partial
    batch = batch_of(copy_task(7, seed=6, names=True))
    out = model(batch.src, batch.prev_tokens, batch.target, label_smoothing=0.1, coverage_loss_weight=0.5)
    out.loss.backward()
    chunked = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    logp = model.scores(batch.src, batch.prev_tokens)
    mask = batch.target.ne(PAD)
    reference = torch.nn.functional.nll_loss(logp[mask], batch.target[mask], reduction="sum")
    smooth = -logp[mask].mean(-1).sum()
    enc = model.encode(batch.src)
    attention = model.decoder(batch.prev_tokens, enc, AttentionChoice()).attention
    total = 0.9 * reference + 0.1 * smooth + 0.5 * coverage_loss(attention, mask)
    total.backward()
    assert out.loss.item() == pytest.approx(total.item(), rel=1e-5)
    assert out.nll.item() == pytest.approx(reference.item(), rel=1e-5)
    for name, p in model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(chunked[name], p.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_first_occurrences_marks_each_piece_once_per_row():
    src = torch.tensor([[5, 7, 5, 0, 0], [9, 9, 9, 4, 9]])
    assert first_occurrences(src).tolist() == [[True, True, False, True, False], [True, False, False, True, False]]


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
@pytest.mark.parametrize("gate_scale", [0.1, 5.0, 30.0])  # p_gen near 1/2, spread, saturated
def test_fused_copy_loss_and_gradients_equal_autograd_in_float64(smoothing, gate_scale):
    """The hand-derived gradients of _FusedCopyLoss against autograd through the plain formula,
    with repeated source pieces, padding, targets copied from the source and partial chunks."""
    torch.manual_seed(0)
    n, s, vocab, dim = 37, 9, 50, 16
    features = torch.randn(n, dim, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(vocab, dim, dtype=torch.float64, requires_grad=True)
    z = (torch.randn(n, dtype=torch.float64) * gate_scale).requires_grad_()
    scores = torch.randn(n, s, dtype=torch.float64)
    scores[:, -2:] = float("-inf")  # padding: attention exactly 0
    scores.requires_grad_()
    attention = scores.softmax(-1)
    src = torch.randint(4, 12, (n, s))  # 8 pieces in 7 positions: repeats in most rows
    src[:, -2:] = PAD
    target = torch.randint(4, vocab, (n,))
    target[::3] = src[::3, 0]
    loss, nll = _FusedCopyLoss.apply(features, weight, z, attention, src, target, smoothing, 8)
    fused = torch.autograd.grad(loss, [features, weight, z, scores], retain_graph=True)
    log_q = (features @ weight.t()).log_softmax(-1)
    copy = torch.zeros(n, vocab, dtype=torch.float64).scatter_add(1, src, attention)
    log_copy = torch.where(copy > 0, copy.clamp_min(1e-300).log(), torch.full_like(copy, float("-inf")))
    log_p = torch.logaddexp(F.logsigmoid(z)[:, None] + log_q, F.logsigmoid(-z)[:, None] + log_copy)
    ref_loss, ref_nll = smoothed_nll(log_p, target, smoothing)
    reference = torch.autograd.grad(ref_loss, [features, weight, z, scores])
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-10)
    assert nll.item() == pytest.approx(ref_nll.item(), rel=1e-10)
    for name, got, want in zip(["features", "weight", "gate", "attention"], fused, reference):
        torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-10, msg=name)


def test_coverage_loss_is_the_hand_computation_and_counts_earlier_steps_only():
    a = torch.tensor([[[0.5, 0.5, 0.0], [0.2, 0.3, 0.5], [0.1, 0.1, 0.8], [0.3, 0.3, 0.4]]])  # [1, T=4, S=3]
    select = torch.tensor([[True, True, True, False]])  # the last step is padding
    # c^0 = 0; c^1 = a^0; c^2 = a^0 + a^1
    expected = 0.0 + (0.2 + 0.3 + 0.0) + (0.1 + 0.1 + 0.5)
    assert coverage_loss(a, select).item() == pytest.approx(expected)
    # a step covering nothing earlier costs nothing, even with all its attention on one position
    assert coverage_loss(torch.tensor([[[1.0, 0.0]]]), torch.tensor([[True]])).item() == 0.0


@pytest.mark.parametrize("timing", ["previous", "current"])
def test_coverage_enters_the_attention_and_the_state_tracks_earlier_steps(timing):
    torch.manual_seed(0)
    model = build_model(rnn_copy_config(coverage=True, timing=timing), VOCAB, VOCAB).eval()
    with torch.no_grad():
        model.decoder.attention.coverage_proj.normal_()  # make coverage matter
    batch = batch_of(copy_task(3, seed=7, names=False))
    enc = model.encode(batch.src)
    with torch.no_grad():
        full = model.decoder(batch.prev_tokens, enc, AttentionChoice()).attention
        state = model.decoder.init_state(enc, AttentionChoice())
        for t in range(batch.prev_tokens.size(1)):
            torch.testing.assert_close(state.coverage, full[:, :t].sum(1), atol=1e-6, rtol=1e-5)
            out, state = model.decoder.step(batch.prev_tokens[:, t], state)
            torch.testing.assert_close(out.attention, full[:, t], atol=1e-6, rtol=1e-5)
        model.decoder.attention.coverage_proj.zero_()
        without = model.decoder(batch.prev_tokens, enc, AttentionChoice()).attention
    assert not torch.allclose(full[:, 1:], without[:, 1:], atol=1e-4)  # coverage changed later steps
    torch.testing.assert_close(full[:, 0], without[:, 0])             # c^0 = 0: the first step is the same


def test_before_the_coverage_phase_the_score_leaves_coverage_out_as_a_zero_coverage_weight_would():
    """See et al. train without coverage first: until the coverage phase, training leaves the coverage
    vector out of the score, which is what the still-zero w_c gives, and w_c gets no gradient."""
    torch.manual_seed(0)
    model = build_model(rnn_copy_config(coverage=True, timing="current"), VOCAB, VOCAB)
    batch = batch_of(copy_task(6, seed=3, names=False))
    w_c = model.decoder.attention.coverage_proj
    before = model(batch.src, batch.prev_tokens, batch.target, label_smoothing=0.1, coverage_vector=False)
    before.loss.backward()
    assert w_c.grad is None
    model.zero_grad()
    with torch.no_grad():
        enc = model.encode(batch.src)
        read = model.decoder(batch.prev_tokens, enc, AttentionChoice(), coverage_vector=True)
        left_out = model.decoder(batch.prev_tokens, enc, AttentionChoice(), coverage_vector=False)
        torch.testing.assert_close(read.features, left_out.features, atol=1e-6, rtol=1e-5)  # w_c = 0
        torch.testing.assert_close(read.attention, left_out.attention, atol=1e-6, rtol=1e-5)
    during = model(batch.src, batch.prev_tokens, batch.target, label_smoothing=0.1, coverage_loss_weight=0.5)
    during.loss.backward()
    assert w_c.grad is not None and float(w_c.grad.abs().sum()) > 0
    torch.testing.assert_close(during.nll, before.nll)  # same model so far: only the loss term was added
    with torch.no_grad():
        w_c.normal_()  # a trained w_c: now reading the coverage changes the attention
        read = model.decoder(batch.prev_tokens, enc, AttentionChoice(), coverage_vector=True)
        left_out = model.decoder(batch.prev_tokens, enc, AttentionChoice(), coverage_vector=False)
    assert not torch.allclose(read.attention[:, 1:], left_out.attention[:, 1:], atol=1e-4)


@pytest.mark.parametrize("kind", ["rnn", "rnn_current", "transformer"])
def test_copy_model_step_by_step_equals_teacher_forcing(kind):
    model = trained(kind)
    batch = batch_of(copy_task(5, seed=8, names=True))
    with torch.no_grad():
        full = model.scores(batch.src, batch.prev_tokens)
        state = model.init_state(model.encode(batch.src))
        for t in range(batch.prev_tokens.size(1)):
            logp, state, _ = model.step(batch.prev_tokens[:, t], state)
            torch.testing.assert_close(logp, full[:, t], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["rnn", "rnn_current", "transformer"])
def test_copy_model_beam_one_is_greedy_and_beam_scores_are_forced_scores(kind):
    model = trained(kind)
    pairs = copy_task(12, seed=9, names=True)
    src = pad_source([s for s, _ in pairs])
    greedy = generate(model, src, GenerationOptions(strategy="greedy"))
    beam1 = generate(model, src, GenerationOptions(beam_size=1))
    assert [g[0].tokens for g in greedy] == [b[0].tokens for b in beam1]
    results = generate(model, src, GenerationOptions(beam_size=4, nbest=4))
    for row, hyps in enumerate(results):
        for h in hyps:
            with torch.no_grad():
                logp = model.scores(src[row : row + 1], torch.tensor([[BOS] + h.tokens]))[0]
            forced = logp.gather(1, torch.tensor(h.tokens + [EOS])[:, None]).sum().item()
            assert h.logprob == pytest.approx(forced, abs=1e-3)


def test_copy_model_sentence_alone_equals_in_batch():
    model = trained("transformer")
    srcs = [s for s, _ in copy_task(10, seed=10, names=True)]
    together = generate(model, pad_source(srcs), GenerationOptions(beam_size=3), need_attention=True)
    for s, hyps in zip(srcs, together):
        alone = generate(model, pad_source([s]), GenerationOptions(beam_size=3), need_attention=True)[0]
        assert alone[0].tokens == hyps[0].tokens
        torch.testing.assert_close(alone[0].attention, hyps[0].attention, atol=1e-5, rtol=1e-4)


def test_unseen_names_are_copied_only_by_the_copy_model():
    pairs = copy_task(100, seed=11, names=True)
    src = pad_source([s for s, _ in pairs])

    def names_reproduced(model) -> float:
        hyps = generate(model, src, GenerationOptions(strategy="greedy"))
        names = [next(t for t in s if t in UNSEEN) for s, _ in pairs]
        return sum(name in h[0].tokens for name, h in zip(names, hyps)) / len(pairs)

    assert names_reproduced(trained("rnn")) >= 0.9
    assert names_reproduced(trained("rnn_nocopy")) <= 0.05


def test_copy_share_counts_tokens_taken_from_the_source():
    torch.manual_seed(0)
    model = build_model(transformer_copy_config(), VOCAB, VOCAB).eval()
    batch = batch_of(copy_task(4, seed=12, names=False))
    with torch.no_grad():
        model.output_layer.gate.bias.fill_(-30.0)
        copied, total = model.copy_share(batch.src, batch.prev_tokens, batch.target)
    assert total == batch.ntokens
    # with p_gen ~ 0 every target token that occurs in the source counts as copied (all but EOS... which the
    # source also holds), so all of them
    assert copied == total
    plain = build_model(transformer_config(), VOCAB, VOCAB)
    assert plain.copy_share(batch.src, batch.prev_tokens, batch.target) == (0, batch.ntokens)


def test_copy_needs_a_joint_vocabulary_and_a_known_attention():
    with pytest.raises(ValueError, match="need one vocabulary: set tokenizer.joint=true"):
        build_model(transformer_copy_config() | {"share_embeddings": False}, VOCAB, VOCAB, joint_vocabulary=False)
    bad = transformer_copy_config(layers=2)
    bad["output"] = {**POINTER, "attention_layer": 5}
    with pytest.raises(ValueError, match="attention layer 5 but the decoder has 2 layers"):
        build_model(bad, VOCAB, VOCAB)
    model = build_model(transformer_copy_config(layers=2), VOCAB, VOCAB)
    with pytest.raises(ValueError, match="reports that one"):
        model.check_report(AttentionChoice(layer=0))
