"""What a search is asked for (GenerationOptions: the generation config group) and what it returns
(Hypothesis), with the length bounds every strategy and backend shares."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from seq2seq.data.tokenizer import PAD
from seq2seq.models.model import AttentionChoice


@dataclass
class Hypothesis:
    tokens: list[int]          # target ids, without BOS and EOS
    logprob: float             # true log-probability of tokens + EOS under the model (no penalties)
    score: float               # logprob / (len(tokens) + 1) ** len_penalty (+ the coverage penalty): what ranks
    attention: torch.Tensor | None = field(default=None, repr=False)  # [len(tokens) + 1, source length]
    unmet: tuple[int, ...] = ()  # constrained search: the input's phrases (their indices) this output lacks


@dataclass
class Guide:
    """What one input's output must honour beyond the options: a target prefix (ids, no BOS) it starts with,
    scored like every other token (so n-best lists and scores stay true), and phrases (id sequences) it must
    contain (seq2seq.generation.constraints)."""

    prefix: list[int] = field(default_factory=list)
    constraints: list[list[int]] = field(default_factory=list)  # phrases the output must contain (beam search)


def guides_of(tokenizer, documents: list) -> list[Guide] | None:
    """One Guide per input (seq2seq.data.corpus.GuidedDocument: text, prefix, constraints): its prefix and
    phrases encoded as target pieces (None when no input has either)."""
    if not any(d.prefix or d.constraints for d in documents):
        return None
    prefixes = tokenizer.encode_tgt([d.prefix or "" for d in documents])
    phrases = [p for d in documents for p in d.constraints]
    encoded = iter(tokenizer.encode_tgt(phrases)) if phrases else iter(())
    return [Guide(prefix=ids if d.prefix else [], constraints=[next(encoded) for _ in d.constraints])
            for ids, d in zip(prefixes, documents)]


def prefix_tensors(guides: list[Guide] | None, device) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(prefix ids [B, P] padded with -1, prefix lengths [B]) of a batch's guides, or None when none has one."""
    if not guides or not any(g.prefix for g in guides):
        return None
    width = max(len(g.prefix) for g in guides)
    ids = torch.full((len(guides), width), -1, dtype=torch.long)
    for row, guide in enumerate(guides):
        ids[row, : len(guide.prefix)] = torch.tensor(guide.prefix, dtype=torch.long)
    return ids.to(device), torch.tensor([len(g.prefix) for g in guides], device=device)


def forced_at(prefix: tuple[torch.Tensor, torch.Tensor] | None, t: int, rows: torch.Tensor) -> torch.Tensor | None:
    """The token each row must take at step t (-1: free), rows [R] giving each row's sentence; None: no prefix."""
    if prefix is None:
        return None
    ids, _ = prefix
    if t >= ids.size(1):
        return None
    return ids[:, t].index_select(0, rows)


STRATEGIES = ("beam", "greedy", "sampling", "mbr")
MBR_UTILITIES = ("chrf", "bleu", "rougeL")  # seq2seq.generation.mbr
MBR_CANDIDATES = ("sampling", "beam")


@dataclass
class GenerationOptions:
    strategy: str = "beam"
    beam_size: int = 5
    nbest: int = 1
    len_penalty: float = 1.0
    min_len: int = 1
    min_len_a: float = 0.0         # min length also >= floor(min_len_a * source length) (capped at the max)
    max_len_a: float = 1.2
    max_len_b: int = 10
    max_len: int = 512
    no_repeat_ngram_size: int = 0  # never emit an n-gram already in the hypothesis (0 = off)
    repetition_penalty: float = 1.0  # log-prob of tokens already in the hypothesis times this (1 = off)
    coverage_penalty: float = 0.0  # beta of Wu et al. (2016), beam search only (0 = off)
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    constraints_ordered: bool = False  # constrained beam search: the phrases must appear in the order given
    epsilon: float = 0.0           # sampling: tokens of probability below this are never drawn (0 = off)
    mbr_candidates: str = "sampling"  # strategy=mbr: sampling (temperature, top_k, top_p, epsilon) | beam (n-best)
    mbr_samples: int = 32          # strategy=mbr: candidates per input (also the pseudo-references)
    mbr_utility: str = "chrf"      # strategy=mbr: chrf | bleu (sacreBLEU's sentence scores) | rougeL
    print_alignment: bool = False  # seq2seq-decode: hard alignments as an extra column
    attention_layer: int = -1      # which decoder layer's attention seq2seq-decode shows (-1 = last)
    attention_head: int = -1       # which head (-1 = mean over heads)

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"generation.strategy must be beam, greedy, sampling or mbr, not '{self.strategy}'")
        if self.beam_size < 1:
            raise ValueError(f"generation.beam_size={self.beam_size} must be at least 1")
        if self.strategy == "beam" and not 1 <= self.nbest <= self.beam_size:
            raise ValueError(f"generation.nbest={self.nbest} must be between 1 and generation.beam_size={self.beam_size}")
        if self.strategy == "greedy" and self.nbest != 1:
            raise ValueError("greedy decoding gives one hypothesis: set generation.nbest=1 or use beam search")
        if self.strategy == "sampling" and self.nbest < 1:
            raise ValueError(f"generation.nbest={self.nbest} must be at least 1 (samples per input)")
        if self.max_len < 1:
            raise ValueError(f"generation.max_len={self.max_len} must be at least 1")
        if self.min_len > self.max_len:
            raise ValueError(f"generation.min_len={self.min_len} is more than generation.max_len={self.max_len}: "
                             f"no hypothesis could satisfy both")
        if self.min_len_a < 0:
            raise ValueError(f"generation.min_len_a={self.min_len_a} must not be negative")
        if self.no_repeat_ngram_size < 0:
            raise ValueError(f"generation.no_repeat_ngram_size={self.no_repeat_ngram_size} must not be negative "
                             f"(0 turns n-gram blocking off)")
        if self.repetition_penalty <= 0:
            raise ValueError(f"generation.repetition_penalty={self.repetition_penalty} must be positive "
                             f"(1.0 = off, above 1 discourages repeats)")
        if self.coverage_penalty < 0:
            raise ValueError(f"generation.coverage_penalty={self.coverage_penalty} must not be negative (0 = off)")
        if self.coverage_penalty > 0 and self.strategy not in ("beam", "mbr"):
            raise ValueError(f"generation.coverage_penalty={self.coverage_penalty} ranks finished beam hypotheses and "
                             f"needs generation.strategy=beam, not {self.strategy}; set generation.coverage_penalty=0")
        if self.temperature <= 0:
            raise ValueError(f"generation.temperature={self.temperature} must be positive")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"generation.top_p={self.top_p} must be in (0, 1]")
        if self.top_k < 0:
            raise ValueError(f"generation.top_k={self.top_k} must not be negative (0 = no cutoff)")
        if not 0 <= self.epsilon < 1:
            raise ValueError(f"generation.epsilon={self.epsilon} must be in [0, 1) (0 = off)")
        self._check_mbr()

    def _check_mbr(self) -> None:
        if self.mbr_candidates not in MBR_CANDIDATES:
            raise ValueError(f"generation.mbr_candidates={self.mbr_candidates}: choose sampling or beam")
        if self.mbr_utility not in MBR_UTILITIES:
            raise ValueError(f"generation.mbr_utility={self.mbr_utility}: choose one of {', '.join(MBR_UTILITIES)}")
        if self.mbr_samples < 1:
            raise ValueError(f"generation.mbr_samples={self.mbr_samples} must be at least 1")
        if self.strategy == "mbr" and self.nbest > self.mbr_samples:
            raise ValueError(f"generation.nbest={self.nbest} is more than generation.mbr_samples="
                             f"{self.mbr_samples}: MBR ranks that many candidates")
        if self.strategy == "mbr" and self.coverage_penalty > 0 and self.mbr_candidates != "beam":
            raise ValueError("generation.coverage_penalty ranks beam hypotheses: with strategy=mbr it needs "
                             "generation.mbr_candidates=beam")

    def candidates(self) -> "GenerationOptions":
        """strategy=mbr: the search that draws its candidates (mbr_samples of them)."""
        if self.mbr_candidates == "beam":
            return replace(self, strategy="beam", beam_size=self.mbr_samples, nbest=self.mbr_samples)
        return replace(self, strategy="sampling", beam_size=1, nbest=self.mbr_samples)

    @property
    def penalised(self) -> bool:
        """Whether the search explores with scores other than the model's log-probabilities."""
        return self.no_repeat_ngram_size > 0 or self.repetition_penalty != 1.0


def _source_lengths(src: torch.Tensor) -> torch.Tensor:
    return (src.ne(PAD).sum(dim=1) - 1).float()  # the source's EOS does not count


def length_limits(src: torch.Tensor, opts: GenerationOptions, max_positions: int) -> torch.Tensor:
    """Most target tokens (EOS excluded) allowed per sentence: a * source length + b, capped."""
    return _limits(_source_lengths(src), opts, max_positions)


def length_bounds(src: torch.Tensor, opts: GenerationOptions, max_positions: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(fewest, most) target tokens (EOS excluded) per sentence: the fewest is
    max(min_len, floor(min_len_a * source length)), capped at that sentence's most."""
    return _bounds(_source_lengths(src), opts, max_positions)


def source_length_bounds(length: int, opts: GenerationOptions, max_positions: int) -> tuple[int, int]:
    """length_bounds of one source of `length` pieces (EOS excluded), as ints (another backend's limits)."""
    least, most = _bounds(torch.tensor([float(length)]), opts, max_positions)
    return int(least[0]), int(most[0])


def _limits(lengths: torch.Tensor, opts: GenerationOptions, max_positions: int) -> torch.Tensor:
    limit = (opts.max_len_a * lengths + opts.max_len_b).floor().long()
    return limit.clamp(min=max(opts.min_len, 1), max=min(opts.max_len, max_positions - 1))


def _bounds(lengths: torch.Tensor, opts: GenerationOptions, max_positions: int) -> tuple[torch.Tensor, torch.Tensor]:
    limits = _limits(lengths, opts, max_positions)
    least = (opts.min_len_a * lengths).floor().long().clamp(min=opts.min_len)
    return torch.minimum(least, limits), limits


def attention_report(opts: GenerationOptions, need_attention: bool) -> AttentionChoice | None:
    """The attention the caller wants with each hypothesis (generation.attention_layer / attention_head)."""
    return AttentionChoice(opts.attention_layer, opts.attention_head) if need_attention else None


def scored_hypothesis(tokens: list[int], logprob: float, len_penalty: float, attention, penalty: float = 0.0) -> Hypothesis:
    return Hypothesis(tokens, logprob, logprob / (len(tokens) + 1) ** len_penalty + penalty, attention)
