"""Attentional RNN models: attention masks and weights, learning, search through the RNN state, attention output."""
from __future__ import annotations

import json
import math
import random
import struct
from pathlib import Path

import pytest
import torch
import yaml

from helpers.commands import compose
from helpers.corpora import toy_corpus_lines
from helpers.models import TOY_SYMBOLS, train_toy_model
from seq2seq.data.batching import collate, pad_source
from seq2seq.data.tokenizer import PAD
from seq2seq.generation.options import GenerationOptions
from seq2seq.generation.search import generate
from seq2seq.models.luong_local import LocalAttention
from seq2seq.models.model import AttentionChoice, build_model

CONF = Path(__file__).resolve().parents[1] / "conf"
VOCAB = 4 + TOY_SYMBOLS
VARIANTS = ["bahdanau", "luong_dot", "luong_general", "luong_concat", "luong_local_m", "luong_local_p", "multihead"]


def group(name: str, option: str, **overrides) -> dict:
    """A config group's YAML as the trainer would see it, ${model.dropout} resolved to 0."""
    node = yaml.safe_load((CONF / "model" / name / f"{option}.yaml").read_text())
    node = {k: (0.0 if v == "${model.dropout}" else v) for k, v in node.items()}
    node.update(overrides)
    return node


def rnn_config(attention: str, dim: int = 64, hidden: int = 128, cell: str = "lstm", bridge: str = "zero",
               encoder: str = "lstm", **attention_keys) -> dict:
    """A tiny attentional RNN from the shipped YAMLs. bridge=zero: the decoder must learn to attend."""
    if attention == "multihead":
        attention_keys.setdefault("heads", 4)
    if attention == "luong_local_m":
        attention_keys.setdefault("window", 2)
    if attention == "luong_local_p":
        attention_keys.setdefault("window", 3)
    enc = (group("encoder", encoder, cell=cell, hidden_size=hidden // 2) if encoder != "transformer"
           else group("encoder", "transformer", layers=1, heads=4, ffn_dim=64))
    return {
        "embed_dim": dim, "dropout": 0.0, "max_positions": 64, "share_embeddings": True, "tie_output": True,
        "encoder": enc,
        "decoder": group("decoder", "rnn", cell=cell, hidden_size=hidden, bridge=bridge,
                         input_feeding=attention != "bahdanau"),
        "attention": group("attention", attention, **attention_keys),
    }


def copy_pairs(n: int, seed: int, min_len: int = 2, max_len: int = 5):
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        src = [rng.randrange(4, VOCAB) for _ in range(rng.randint(min_len, max_len))]
        pairs.append((src, list(src)))
    return pairs


_TRAINED: dict[str, torch.nn.Module] = {}


def trained(variant: str, steps: int = 250, batch_size: int = 64, lr: float = 7e-3):
    """The variant trained to copy sequences (once per session; later tests reuse it).

    The rate decays linearly to zero, so the last updates settle: Luong local-m trained this way reached
    99.7-100% token accuracy over seeds 0-7. At a constant rate it ended at 95.4-99.0% depending on the seed
    and on float rounding alone (the kernel plan, the loss's summation order), around the 97% asserted below."""
    if variant not in _TRAINED:
        torch.manual_seed(0)
        model = build_model(rnn_config(variant), VOCAB, VOCAB)
        _TRAINED[variant] = train_toy_model(model, steps, batch_size, lr, seed=0,
                                            pairs=copy_pairs(steps * batch_size, seed=1), decay=True)
    return _TRAINED[variant]


def ragged_batch():
    """Sources of very different lengths (1 to 40 tokens before EOS)."""
    rng = random.Random(5)
    lengths = [1, 40, 3, 17, 2]
    return [[rng.randrange(4, VOCAB) for _ in range(n)] for n in lengths]


def check_distribution(weights: torch.Tensor, padding_mask: torch.Tensor) -> None:
    """weights [B,T,S]: each row sums to 1 over the real positions and is exactly 0 on padding."""
    pad = padding_mask[:, None, :].expand_as(weights)
    assert torch.all(weights[pad] == 0.0)
    assert torch.all(weights >= 0)
    torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:2]), atol=1e-5, rtol=0)


# ---------------------------------------------------------------- attention weights and masks
def attention_over_ragged_batch(variant: str, **attention_keys):
    """(src, weights [B,12,S]) of a fresh model teacher-forced on a ragged batch; step-by-step
    decoding must give the same weights."""
    torch.manual_seed(0)
    model = build_model(rnn_config(variant, bridge="learned", **attention_keys), VOCAB, VOCAB).eval()
    src = pad_source(ragged_batch())
    prev = torch.randint(4, VOCAB, (src.size(0), 12))
    with torch.no_grad():
        enc = model.encode(src)
        weights = model.decoder(prev, enc, AttentionChoice()).attention
        assert weights.shape == (src.size(0), 12, src.size(1))
        state = model.init_state(enc, AttentionChoice())
        for t in range(12):
            _, state, step_weights = model.step(prev[:, t], state)
            torch.testing.assert_close(step_weights, weights[:, t], atol=1e-5, rtol=0)
    return src, weights


@pytest.mark.parametrize("variant", VARIANTS)
def test_weights_are_distributions_over_real_positions(variant):
    # local-p as in the paper sums to less than 1 (next test); renormalized, it is a distribution
    keys = {"renormalize": True} if variant == "luong_local_p" else {}
    src, weights = attention_over_ragged_batch(variant, **keys)
    check_distribution(weights, src.eq(PAD))


# attention reading the state after the step, no input feeding: training needs no step loop
WHOLE = [("bahdanau", {"timing": "current"}), ("luong_general", {}), ("luong_concat", {}), ("luong_local_m", {}),
         ("multihead", {})]


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("variant,keys", WHOLE, ids=[v for v, _ in WHOLE])
def test_whole_target_at_once_equals_step_by_step_values_and_gradients(variant, keys, cell):
    """The RNN over the whole target in one call (and the attention too, where it has attend_all) gives
    the step loop's features, attention and context, and the same gradients for every parameter."""
    torch.manual_seed(0)
    config = rnn_config(variant, cell=cell, bridge="learned", **keys)
    config["decoder"].update(input_feeding=False, layers=2)
    model = build_model(config, VOCAB, VOCAB)  # training mode (dropout 0)
    decoder = model.decoder
    src = pad_source(ragged_batch())
    prev = torch.randint(4, VOCAB, (src.size(0), 9))
    enc = model.encode(src)

    def no_loop(*args, **kwargs):
        pytest.fail("the whole-target forward stepped through the positions")

    decoder._step = no_loop
    if hasattr(decoder.attention, "attend_all"):
        decoder._attend = no_loop
    whole = decoder(prev, enc, AttentionChoice())
    decoder.__dict__.pop("_step")
    decoder.__dict__.pop("_attend", None)
    state = decoder.init_state(enc, AttentionChoice())
    steps = []
    for t in range(prev.size(1)):
        out, state = decoder.step(prev[:, t], state)
        steps.append(out)
    stepped = {name: torch.stack([getattr(o, name) for o in steps], dim=1)
               for name in ("features", "attention", "context")}
    for name, value in stepped.items():
        torch.testing.assert_close(getattr(whole, name), value, atol=1e-5, rtol=1e-5)
    probes = {name: torch.randn_like(value) for name, value in stepped.items()}
    params = [p for p in model.parameters() if p.requires_grad]

    def grads(values):
        total = sum((values[name] * probes[name]).sum() for name in probes)
        return torch.autograd.grad(total, params, retain_graph=True, allow_unused=True)

    for name, a, b in zip([n for n, p in model.named_parameters() if p.requires_grad],
                          grads({n: getattr(whole, n) for n in probes}), grads(stepped)):
        assert (a is None) == (b is None), name
        if a is not None:
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4, msg=name)


GROUPED = [("bahdanau", {}), ("bahdanau", {"timing": "current", "coverage": True}), ("luong_general", {}),
           ("luong_concat", {}), ("multihead", {}), ("luong_local_p", {})]


@pytest.mark.parametrize("variant,keys", GROUPED, ids=["bahdanau", "bahdanau_current_coverage", "luong_general",
                                                       "luong_concat", "multihead", "local_p_gathers"])
def test_hypotheses_share_one_memory_row_per_sentence_and_decode_as_with_copies(variant, keys):
    """Beam search's reorders keep the encoder memory once per sentence (dropping the rows of finished
    sentences); every step equals a state whose memory was copied for each hypothesis up front,
    also after a reorder that mixes sentences (then the memory is gathered per row)."""
    torch.manual_seed(0)
    config = rnn_config(variant, bridge="learned", **keys)
    if keys.get("timing") == "current":
        config["decoder"]["input_feeding"] = False
    model = build_model(config, VOCAB, VOCAB).eval()
    src = pad_source(ragged_batch())
    k, sentences = 3, src.size(0)
    rows = torch.arange(sentences).repeat_interleave(k)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        if keys.get("coverage"):
            model.decoder.attention.coverage_proj.normal_(generator=generator)
        shared = model.decoder.init_state(model.encode(src), AttentionChoice()).reorder(rows)
        copied = model.decoder.init_state(model.encode(src.index_select(0, rows)), AttentionChoice())
        assert shared.memory[0].size(0) == sentences and copied.memory[0].size(0) == sentences * k
        live = list(range(sentences))
        for t in range(6):
            tokens = torch.randint(4, VOCAB, (len(live) * k,), generator=generator)
            out_shared, shared = model.decoder.step(tokens, shared)
            out_copied, copied = model.decoder.step(tokens, copied)
            torch.testing.assert_close(out_shared.features, out_copied.features, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(out_shared.attention, out_copied.attention, atol=1e-6, rtol=1e-5)
            if t == 2:  # sentence 1 finishes: its rows and its memory row leave
                live.remove(1)
            # beam-like: each sentence's k new rows come from its own rows, in any order
            order = torch.cat([torch.randint(0, k, (k,), generator=generator) + i * k
                               for i in range(len(live) + (t == 2)) if not (t == 2 and i == 1)])
            if t == 4:  # not the beam layout: the memory is gathered per row for this step
                order = order.flip(0)
            shared, copied = shared.reorder(order), copied.reorder(order)
            if t < 4:
                assert shared.memory[0].size(0) == len(live)


def test_bahdanau_timing_is_checked():
    with pytest.raises(ValueError, match="model.attention.timing must be previous or current, not 'next'"):
        build_model(rnn_config("bahdanau", timing="next"), VOCAB, VOCAB)


def test_local_p_as_in_the_paper_is_zero_on_padding_and_sums_to_at_most_one():
    src, weights = attention_over_ragged_batch("luong_local_p")
    padding = src.eq(PAD)[:, None, :].expand_as(weights)
    assert torch.all(weights[padding] == 0.0) and torch.all(weights >= 0)
    sums = weights.sum(-1)
    assert torch.all(sums <= 1 + 1e-6) and torch.all(sums > 0)
    assert float(sums.min()) < 0.99  # the Gaussian really shrinks some rows: not secretly renormalized


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_encoder_by_length_equals_packed_sequences_values_and_gradients(cell, bidirectional):
    """The CPU path (one fused call per distinct length) against torch's packed sequences: same states,
    final states and gradients, rows of equal and different lengths, two layers."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    from seq2seq.models.rnn_encoder import RNNEncoder

    torch.manual_seed(0)
    encoder = RNNEncoder(torch.nn.Embedding(VOCAB, 16), 16, 64, cell=cell, layers=2, hidden_size=12,
                         bidirectional=bidirectional, dropout=0.0)
    sources = ragged_batch() + [ragged_batch()[3], [5]]  # a repeated length, and the shortest possible
    src = pad_source(sources)
    mask = src.eq(PAD)
    mine = encoder(src, mask)
    x = encoder.embed(src)
    packed, final = encoder.rnn(pack_padded_sequence(x, (~mask).sum(1), batch_first=True, enforce_sorted=False))
    states, _ = pad_packed_sequence(packed, batch_first=True, total_length=src.size(1))
    finals = final if isinstance(final, tuple) else (final,)
    finals = tuple(encoder._merge_directions(f) for f in finals)
    mine_finals = mine.final if isinstance(mine.final, tuple) else (mine.final,)
    torch.testing.assert_close(mine.states, states, atol=1e-6, rtol=1e-5)
    assert torch.all(mine.states[mask] == 0)
    for a, b in zip(mine_finals, finals):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    probe = torch.randn_like(states)
    params = list(encoder.parameters())
    grad_mine = torch.autograd.grad((mine.states * probe).sum() + sum(f.sum() for f in mine_finals), params)
    grad_packed = torch.autograd.grad((states * probe).sum() + sum(f.sum() for f in finals), params)
    for (name, _), a, b in zip(encoder.named_parameters(), grad_mine, grad_packed):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_padding_never_reaches_encoder_states(cell):
    torch.manual_seed(0)
    model = build_model(rnn_config("luong_general", cell=cell, bridge="learned"), VOCAB, VOCAB).eval()
    sources = ragged_batch()
    batch = model.encode(pad_source(sources))
    finals = batch.final if isinstance(batch.final, tuple) else (batch.final,)
    for i, src in enumerate(sources):
        alone = model.encode(pad_source([src]))
        n = len(src) + 1
        torch.testing.assert_close(batch.states[i, :n], alone.states[0], atol=1e-5, rtol=0)
        assert torch.all(batch.states[i, n:] == 0)
        alone_finals = alone.final if isinstance(alone.final, tuple) else (alone.final,)
        for f, g in zip(finals, alone_finals):
            assert f.dim() == 3 and f.size(1) == len(sources)  # [layers, B, 2H]: batch at dim -2
            torch.testing.assert_close(f[:, i], g[:, 0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("renormalize", [False, True])
def test_local_p_window_and_gaussian_match_a_hand_computation(renormalize):
    attention = LocalAttention(query_dim=2, key_dim=2, mode="predictive", window=2, score="dot", hidden_dim=2,
                               renormalize=renormalize)
    with torch.no_grad():
        attention.position_proj.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        attention.position_v.weight.copy_(torch.tensor([[1.0, -1.0]]))
    keys = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.5], [0.5, 0.5], [2.0, 0.0], [0.0, 0.0]]])
    mask = torch.tensor([[False] * 6 + [True]])  # 6 real positions, one padding
    query = torch.tensor([[0.8, -0.3]])
    _, weights = attention(query, attention.precompute(keys, mask), position=0)

    length, sigma = 6, 2 / 2
    p = length / (1 + math.exp(-(math.tanh(0.8) - math.tanh(-0.3))))  # S * sigmoid(v_p^T tanh(W_p h))
    scores = [0.8 * k[0] - 0.3 * k[1] for k in keys[0].tolist()]
    inside = [s for s in range(length) if abs(s - p) <= 2]
    assert inside == [3, 4, 5]  # p = 4.33: the window [2.33, 6.33] also covers the padding at 6
    align = {s: math.exp(scores[s]) / sum(math.exp(scores[r]) for r in inside) for s in inside}  # softmax in window
    gauss = {s: align[s] * math.exp(-((s - p) ** 2) / (2 * sigma**2)) for s in inside}
    total = sum(gauss.values()) if renormalize else 1.0
    expected = [gauss.get(s, 0.0) / total for s in range(7)]
    torch.testing.assert_close(weights[0], torch.tensor(expected), atol=1e-6, rtol=0)
    assert weights[0, 6] == 0.0 and weights[0, :3].eq(0.0).all()
    assert (abs(float(weights.detach().sum()) - 1) < 1e-6) == renormalize  # the paper's form sums to 0.81 here


def test_renormalize_is_refused_for_local_m():
    with pytest.raises(ValueError, match="renormalize applies to local-p"):
        LocalAttention(query_dim=2, key_dim=2, mode="monotonic", window=2, renormalize=True)


def test_local_m_window_follows_the_target_position_and_stops_at_the_source_end():
    attention = LocalAttention(query_dim=3, key_dim=3, mode="monotonic", window=1, score="dot")
    keys = torch.randn(2, 8, 3)
    mask = torch.tensor([[False] * 8, [False] * 4 + [True] * 4])
    memory = attention.precompute(keys, mask)
    query = torch.randn(2, 3)
    for t in range(10):
        _, weights = attention(query, memory, position=t)
        for b, length in enumerate((8, 4)):
            centre = min(t, length - 1)
            allowed = [s for s in range(8) if abs(s - centre) <= 1 and s < length]
            assert weights[b].nonzero()[:, 0].tolist() == allowed
            assert abs(float(weights[b].sum()) - 1) < 1e-6


# ---------------------------------------------------------------- learning
@pytest.mark.parametrize("variant", VARIANTS)
def test_each_variant_learns_to_copy(variant):
    model = trained(variant)
    test = copy_pairs(200, seed=99)
    batch = collate([s for s, _ in test], [t for _, t in test])
    with torch.no_grad():
        predicted = model.scores(batch.src, batch.prev_tokens).argmax(-1)
    real = batch.target.ne(PAD)
    token_accuracy = float((predicted.eq(batch.target) & real).sum()) / float(real.sum())
    hyps = generate(model, pad_source([s for s, _ in test]), GenerationOptions(strategy="greedy", beam_size=1))
    exact = sum(h[0].tokens == t for h, (_, t) in zip(hyps, test)) / len(test)
    assert token_accuracy >= 0.97, (variant, token_accuracy, exact)
    assert exact >= 0.85, (variant, token_accuracy, exact)


# ---------------------------------------------------------------- search over the RNN state
SEARCH_VARIANTS = ["bahdanau", "luong_general", "luong_local_p", "multihead"]


@pytest.mark.parametrize("variant", SEARCH_VARIANTS)
def test_beam_one_equals_greedy(variant):
    model = trained(variant)
    src = pad_source([s for s, _ in copy_pairs(30, seed=7, max_len=8)])
    beam = generate(model, src, GenerationOptions(strategy="beam", beam_size=1, nbest=1))
    greedy = generate(model, src, GenerationOptions(strategy="greedy", beam_size=1))
    for b, g in zip(beam, greedy):
        assert b[0].tokens == g[0].tokens
        assert abs(b[0].logprob - g[0].logprob) < 1e-4


@pytest.mark.parametrize("variant", SEARCH_VARIANTS)
def test_beam_logprob_equals_forced_decoding(variant):
    model = trained(variant)
    sources = [s for s, _ in copy_pairs(12, seed=8, max_len=8)]
    results = generate(model, pad_source(sources), GenerationOptions(beam_size=4, nbest=4, len_penalty=1.0),
                       need_attention=True)
    for src, hyps in zip(sources, results):
        assert len(hyps) == 4
        batch = collate([src] * len(hyps), [h.tokens for h in hyps])
        with torch.no_grad():
            logp = model.scores(batch.src, batch.prev_tokens).float().log_softmax(-1)
        forced = logp.gather(2, batch.target[:, :, None])[:, :, 0].masked_fill(batch.target.eq(PAD), 0).sum(1)
        for h, f in zip(hyps, forced.tolist()):
            assert abs(h.logprob - f) < 1e-4
            assert h.attention.shape == (len(h.tokens) + 1, len(src) + 1)
            rows = h.attention.sum(-1)
            if variant == "luong_local_p":  # the paper's Gaussian weighting: at most 1
                assert torch.all(rows > 0) and torch.all(rows <= 1 + 1e-6)
            else:
                torch.testing.assert_close(rows, torch.ones(len(h.tokens) + 1), atol=1e-5, rtol=0)


@pytest.mark.parametrize("strategy,beam", [("beam", 4), ("greedy", 1)])
@pytest.mark.parametrize("variant", ["bahdanau", "luong_local_m"])
def test_sentence_alone_equals_sentence_in_padded_batch(variant, strategy, beam):
    model = trained(variant)
    sources = ragged_batch()
    opts = GenerationOptions(strategy=strategy, beam_size=beam, max_len_a=0.0, max_len_b=12)
    together = generate(model, pad_source(sources), opts, need_attention=True)
    for src, hyps in zip(sources, together):
        alone = generate(model, pad_source([src]), opts, need_attention=True)[0]
        assert alone[0].tokens == hyps[0].tokens
        assert abs(alone[0].logprob - hyps[0].logprob) < 1e-4
        torch.testing.assert_close(alone[0].attention, hyps[0].attention, atol=1e-5, rtol=0)


# ---------------------------------------------------------------- pairings
def test_incompatible_pairings_are_refused_clearly():
    transformer = rnn_config("bahdanau")
    transformer["decoder"] = group("decoder", "transformer", layers=1, heads=4, ffn_dim=64)
    with pytest.raises(ValueError, match="model/decoder=transformer cannot use model/attention=bahdanau"):
        build_model(transformer, VOCAB, VOCAB)
    feeding = rnn_config("bahdanau")
    feeding["decoder"]["input_feeding"] = True
    with pytest.raises(ValueError, match="input_feeding=false"):
        build_model(feeding, VOCAB, VOCAB)
    with pytest.raises(ValueError, match="dot attention needs"):
        build_model(rnn_config("luong_dot", dim=64, hidden=128) | {"decoder": group("decoder", "rnn", hidden_size=96)},
                    VOCAB, VOCAB)
    no_final = build_model(rnn_config("luong_general", encoder="transformer", bridge="learned", dim=64, hidden=64),
                           VOCAB, VOCAB)
    with pytest.raises(ValueError, match="bridge=learned needs an encoder"):  # a Transformer has no final states
        no_final.scores(pad_source([[4, 5]]), torch.tensor([[2, 4]]))
    with pytest.raises(ValueError, match="hidden_dim"):
        build_model(rnn_config("luong_local_m", hidden_dim=8), VOCAB, VOCAB)
    with pytest.raises(ValueError, match="model.attention"):
        build_model(rnn_config("bahdanau", heads=4), VOCAB, VOCAB)  # a key bahdanau does not take


def test_transformer_encoder_feeds_an_rnn_decoder_through_the_mean_bridge():
    torch.manual_seed(0)
    model = build_model(rnn_config("luong_general", encoder="transformer", bridge="mean", dim=64, hidden=64),
                        VOCAB, VOCAB).eval()
    hyps = generate(model, pad_source(ragged_batch()), GenerationOptions(beam_size=3), need_attention=True)
    assert all(h[0].attention.shape[1] == n + 1 for h, n in zip(hyps, [1, 40, 3, 17, 2]))


def test_transformer_attention_layer_and_head_selection():
    from helpers.models import transformer_config

    torch.manual_seed(0)
    model = build_model(transformer_config(layers=2, heads=4), VOCAB, VOCAB).eval()
    src = pad_source(ragged_batch())
    prev = torch.randint(4, VOCAB, (src.size(0), 6))
    enc = model.encode(src)
    per_head = []
    for head in range(4):
        choice = AttentionChoice(layer=0, head=head)
        per_head.append(model.decoder(prev, enc, choice).attention)
        state = model.init_state(enc, choice)
        _, _, first = model.step(prev[:, 0], state)
        torch.testing.assert_close(first, per_head[-1][:, 0], atol=1e-5, rtol=0)
    mean = model.decoder(prev, enc, AttentionChoice(layer=0, head=-1)).attention
    torch.testing.assert_close(mean, torch.stack(per_head).mean(0), atol=1e-6, rtol=0)
    check_distribution(mean, src.eq(PAD))
    last = model.decoder(prev, enc, AttentionChoice()).attention
    assert not torch.allclose(last, mean)
    # the choice travels with the call and the state: nothing is left set on the module
    assert model.decoder(prev, enc).attention is None
    with pytest.raises(ValueError, match="attention layer 2 but the decoder has 2 layers"):
        model.init_state(enc, AttentionChoice(layer=2))
    with pytest.raises(ValueError, match="attention head 4 but the attention has 4 heads"):
        model.init_state(enc, AttentionChoice(head=4))


# ---------------------------------------------------------------- seeing the attention
def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_heatmap_is_a_png_of_the_documented_size(tmp_path):
    from seq2seq.visualize import heatmap_size, plot_attention

    src, tgt = ["▁a", "▁cat", "s", "</s>"], ["▁eine", "▁Katze", "</s>"]
    weights = torch.tensor([[0.7, 0.2, 0.1, 0.0], [0.0, 0.9, 0.1, 0.0], [0.0, 0.0, 0.2, 0.8]])
    path = plot_attention(weights, src, tgt, tmp_path / "a.png")
    # left labels 20 + 7 * 6 chars, 4 cells of 22, colour bar 70; title 24, 3 cells, bottom labels 20 + 7 * 4
    assert heatmap_size(src, tgt) == (62 + 88 + 70, 24 + 66 + 48)
    assert png_size(path) == (220, 138)
    with pytest.raises(ValueError, match="does not match"):
        plot_attention(weights.t(), src, tgt, tmp_path / "b.png")


def test_hard_alignment_is_the_argmax_without_eos():
    from seq2seq.visualize import format_alignment, hard_alignment

    weights = torch.tensor([[0.1, 0.8, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8], [0.0, 0.1, 0.9]])
    assert hard_alignment(weights) == [(1, 0), (0, 1)]  # the third piece points at the source EOS
    assert format_alignment(hard_alignment(weights)) == "1-0 0-1"


def test_decode_writes_heatmaps_weights_and_alignments(tmp_path):
    from seq2seq.data.tokenizer import Tokenizer, train_sentencepiece
    from seq2seq.decode import decode
    from seq2seq.training.checkpoint import save_checkpoint

    src_lines, tgt_lines = toy_corpus_lines(300, seed=1)
    spm = train_sentencepiece(src_lines + tgt_lines, tmp_path / "spm" / "spm", model_type="unigram", vocab_size=60,
                              character_coverage=1.0, max_sentences=10000)
    run = tmp_path / "run"
    tokenizer = Tokenizer(spm).save(run / "tokenizer")
    torch.manual_seed(0)
    cfg = rnn_config("luong_general", bridge="learned")
    model = build_model(cfg, tokenizer.src_vocab_size, tokenizer.tgt_vocab_size)
    save_checkpoint({"model": model.state_dict(), "model_config": cfg}, run / "checkpoints" / "best.pt")
    lines = ["the cat sees a dog", "", "a red house", "big tree"]
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n")
    decode(compose("decode", f"run={run}", f"input={tmp_path / 'in.txt'}", f"output={tmp_path / 'out.txt'}",
                   "precision=fp32", "kernels.linear=mkl", "kernels.attention=fused", "device=cpu", "threads=1",
                   "batch_tokens=100", f"attention={tmp_path / 'attn'}", "attention_max_sentences=2", "generation.beam_size=2",
                   "generation.print_alignment=true", "generation.max_len_b=5"))
    out = (tmp_path / "out.txt").read_text().split("\n")[:-1]
    assert len(out) == 4 and out[1] == "\t"
    records = [json.loads(line) for line in (tmp_path / "attn" / "attention.jsonl").read_text().splitlines()]
    assert [r["index"] for r in records] == [0, 2]  # the first two non-empty lines
    assert sorted(p.name for p in (tmp_path / "attn").glob("*.png")) == ["000000.png", "000002.png"]
    for r in records:
        assert r["source"] == tokenizer.src_pieces(tokenizer.encode_src([lines[r["index"]]])[0]) + ["</s>"]
        assert len(r["weights"]) == len(r["target"]) and all(len(w) == len(r["source"]) for w in r["weights"])
        assert all(abs(sum(w) - 1) < 1e-3 for w in r["weights"])
        pairs = [tuple(map(int, p.split("-"))) for p in out[r["index"]].split("\t")[1].split()]
        assert all(0 <= i < len(r["source"]) - 1 and 0 <= j < len(r["target"]) - 1 for i, j in pairs)
        assert png_size(tmp_path / "attn" / f"{r['index']:06d}.png")[0] > 0


def test_a_module_without_the_rnn_attention_contract_is_refused():
    """RNNDecoder checks its attention against seq2seq.models.rnn_attention.RNNAttention when it is built."""
    cfg = rnn_config("luong_general")
    cfg["attention"] = {"_target_": "torch.nn.Identity"}
    with pytest.raises(ValueError, match=r"Identity is not an RNN attention .*query_timing previous\|current"):
        build_model(cfg, 20, 20)
