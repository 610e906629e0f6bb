"""Attention you can look at: heatmaps, raw weights as JSON lines, and hard alignments.

Weights are a hypothesis' attention [target pieces + EOS, source pieces + EOS], as the
search returns it (Hypothesis.attention). The heatmap's pixel size depends only on the
number and length of the labels (heatmap_size), so figures line up and tests can check it.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

CELL_PX = 22          # one source x target cell
CHAR_PX = 7           # room per label character (9 pt labels at DPI)
LABEL_PAD_PX = 20     # space between the labels and the figure's edge
COLORBAR_PX = 70      # colour bar and its tick labels, right of the grid
TOP_PX = 24           # the title, above the grid
DPI = 100
EOS_PIECE = "</s>"


def heatmap_size(src_pieces: list[str], tgt_pieces: list[str]) -> tuple[int, int]:
    """(width, height) in pixels of the heatmap of these labels."""
    left = LABEL_PAD_PX + CHAR_PX * max(map(len, tgt_pieces), default=1)
    bottom = LABEL_PAD_PX + CHAR_PX * max(map(len, src_pieces), default=1)
    return left + CELL_PX * len(src_pieces) + COLORBAR_PX, TOP_PX + CELL_PX * len(tgt_pieces) + bottom


def plot_attention(weights, src_pieces: list[str], tgt_pieces: list[str], path: str | Path,
                   title: str | None = None) -> Path:
    """Write a PNG heatmap of weights [len(tgt_pieces), len(src_pieces)]: target rows, source columns."""
    import matplotlib  # lazy: a second of start-up, only for heatmaps

    matplotlib.use("Agg")
    from matplotlib.figure import Figure  # lazy: after matplotlib.use

    weights = torch.as_tensor(weights, dtype=torch.float).cpu()
    if tuple(weights.shape) != (len(tgt_pieces), len(src_pieces)):
        raise ValueError(f"attention of shape {tuple(weights.shape)} does not match "
                         f"{len(tgt_pieces)} target x {len(src_pieces)} source labels")
    width, height = heatmap_size(src_pieces, tgt_pieces)
    left = LABEL_PAD_PX + CHAR_PX * max(map(len, tgt_pieces), default=1)
    bottom = LABEL_PAD_PX + CHAR_PX * max(map(len, src_pieces), default=1)
    grid_w, grid_h = CELL_PX * len(src_pieces), CELL_PX * len(tgt_pieces)
    # Half a pixel more than wanted: the canvas truncates inches * dpi to whole pixels.
    fig = Figure(figsize=((width + 0.5) / DPI, (height + 0.5) / DPI), dpi=DPI)
    ax = fig.add_axes((left / width, bottom / height, grid_w / width, grid_h / height))
    image = ax.imshow(weights.numpy(), aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks(range(len(src_pieces)), src_pieces, rotation=90, fontsize=9)
    ax.set_yticks(range(len(tgt_pieces)), tgt_pieces, fontsize=9)
    ax.tick_params(length=0)
    if title:
        ax.set_title(title, fontsize=8)
    bar = fig.add_axes(((left + grid_w + 10) / width, bottom / height, 12 / width, grid_h / height))
    fig.colorbar(image, cax=bar)
    bar.tick_params(labelsize=7)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=DPI)
    return path


def hard_alignment(weights, skip_source_eos: bool = True) -> list[tuple[int, int]]:
    """(source, target) pairs: for each target piece (EOS row excluded) its most attended source piece.

    Pairs pointing at the source's EOS (its last column) carry no word alignment and are left out.
    """
    weights = torch.as_tensor(weights, dtype=torch.float)
    rows = weights[:-1]
    if rows.numel() == 0:
        return []
    best = rows.argmax(dim=1).tolist()
    eos = weights.size(1) - 1
    return [(i, j) for j, i in enumerate(best) if not (skip_source_eos and i == eos)]


def format_alignment(pairs: list[tuple[int, int]]) -> str:
    """Moses/fairseq style: 'i-j' pairs (source i, target j, 0-based), space separated."""
    return " ".join(f"{i}-{j}" for i, j in pairs)


def attention_record(index: int, src_pieces: list[str], tgt_pieces: list[str], weights, digits: int = 4) -> dict:
    """One JSON-lines object: input line index, labels (EOS included) and the rounded weights."""
    weights = torch.as_tensor(weights, dtype=torch.float)
    return {"index": index, "source": list(src_pieces), "target": list(tgt_pieces),
            "weights": [[round(w, digits) for w in row] for row in weights.tolist()]}


def write_attention(folder: str | Path, items, max_sentences: int = 0) -> int:
    """Heatmaps <folder>/<index>.png and <folder>/attention.jsonl for items (index, src_pieces,
    tgt_pieces, weights), EOS labels added here; the first max_sentences only (0 = all).
    Returns how many sentences were written.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = 0
    with open(folder / "attention.jsonl", "w", encoding="utf-8") as jsonl:
        for index, src_pieces, tgt_pieces, weights in items:
            if max_sentences and written >= max_sentences:
                break
            src_labels, tgt_labels = list(src_pieces) + [EOS_PIECE], list(tgt_pieces) + [EOS_PIECE]
            jsonl.write(json.dumps(attention_record(index, src_labels, tgt_labels, weights), ensure_ascii=False) + "\n")
            plot_attention(weights, src_labels, tgt_labels, folder / f"{index:06d}.png", title=f"line {index + 1}")
            written += 1
    return written
