"""A run folder written by seq2seq-train, read one way by everything that uses it (seq2seq-decode,
-export, -serve, the decoding backends, the benchmarks):

    <run>/config.yaml        the composed config of the training run (read once, strictly)
    <run>/tokenizer/         seq2seq.data.tokenizer.Tokenizer.save
    <run>/checkpoints/       best.pt, last.pt, averaged.pt, step_<N>.pt

One rule names a checkpoint: a name (`best`, `last`, `averaged`, `step_4500`) is <run>/checkpoints/<name>.pt;
anything else (a path with a folder or a .pt suffix) is a file. `members` turns run=/checkpoint= (each one
value or a list) into the checkpoints an ensemble decodes with.
"""
from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import NamedTuple

import torch
from omegaconf import OmegaConf

from seq2seq.data.tokenizer import Tokenizer
from seq2seq.generation.options import GenerationOptions
from seq2seq.models.model import EncoderDecoder, build_model
from seq2seq.training.checkpoint import CheckpointError, check_positions_layout, load_checkpoint, load_model_state

SEARCH_KEYS = ("strategy", "beam_size", "nbest", "temperature", "top_k", "top_p", "epsilon", "mbr_candidates",
               "mbr_samples", "mbr_utility")  # what a generation=<group> sets
GENERATION_KEYS = frozenset(f.name for f in dataclasses.fields(GenerationOptions))


class LoadedRun(NamedTuple):
    """A run's model (in eval mode, on the device asked for), its tokenizer and the checkpoint file read."""

    model: EncoderDecoder
    tokenizer: Tokenizer
    checkpoint: Path


@dataclasses.dataclass(frozen=True)
class RunFolder:
    path: Path

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))
        if not self.path.is_dir():
            raise FileNotFoundError(f"run folder not found: {self.path}")

    def checkpoint(self, name: str | Path = "best") -> Path:
        """The checkpoint file a name stands for (the module's one rule); FileNotFoundError naming the run's
        checkpoints when there is none."""
        text = str(name)
        is_name = "/" not in text and "\\" not in text and not text.endswith(".pt")
        path = self.path / "checkpoints" / f"{text}.pt" if is_name else Path(text)
        if not path.is_file():
            found = sorted(p.stem for p in (self.path / "checkpoints").glob("*.pt"))
            raise FileNotFoundError(f"checkpoint not found: {path} (checkpoint={text}; this run has "
                                    f"{', '.join(found) or 'none'})")
        return path

    @functools.cached_property
    def saved_config(self) -> dict:
        """config.yaml as a plain dict ({} for a folder without one: a run copied without it still decodes)."""
        file = self.path / "config.yaml"
        if not file.is_file():
            return {}
        saved = OmegaConf.to_container(OmegaConf.load(file))
        if not isinstance(saved, dict):
            raise ValueError(f"{file} is not a config mapping")
        return saved

    def saved_generation(self) -> dict:
        """The run's saved generation settings; a key this version does not know is an error, not dropped."""
        saved = self.saved_config.get("generation") or {}
        unknown = sorted(set(saved) - GENERATION_KEYS)
        if unknown:
            raise ValueError(f"{self.path / 'config.yaml'}: unknown generation setting(s) "
                             f"{', '.join(unknown)} (known: {', '.join(sorted(GENERATION_KEYS))})")
        return saved

    def generation_settings(self, composed: dict, overrides: list[str]) -> dict:
        """The run's saved generation settings, overridden by what the command line set: each
        generation.<key>=<value>, and the SEARCH_KEYS of a generation=<group> choice. A key the run did not
        save falls back to the composed default."""
        saved = self.saved_generation()
        settings = {k: saved.get(k, v) for k, v in composed.items()}
        for override in overrides:
            key = override.lstrip("+~").split("=", 1)[0].split("@", 1)[0]
            if key == "generation":
                settings.update({k: composed[k] for k in SEARCH_KEYS})
            elif key.startswith("generation."):
                name = key.split(".", 1)[1]
                settings[name] = composed[name]
        return settings

    def generation_options(self) -> GenerationOptions | None:
        """The saved generation settings as options (None for a run without them)."""
        saved = self.saved_generation()
        return GenerationOptions(**saved) if saved else None

    def load(self, checkpoint: str | Path = "best", device: torch.device | None = None) -> LoadedRun:
        path = self.checkpoint(checkpoint)
        state = load_checkpoint(path)
        if "model" not in state or "model_config" not in state:
            raise CheckpointError(f"{path} is not a seq2seq checkpoint (no model weights or model config)")
        tokenizer = Tokenizer.load(self.path / "tokenizer")
        model = build_model(state["model_config"], tokenizer.src_vocab_size, tokenizer.tgt_vocab_size,
                            tokenizer.joint)
        check_positions_layout(model, state["model"], path)
        load_model_state(model, state["model"], path)
        model.to(device or torch.device("cpu")).eval()
        return LoadedRun(model, tokenizer, path)


@dataclasses.dataclass(frozen=True)
class Member:
    """One model of what a decoder or server loads: a run folder's checkpoint."""

    run: RunFolder
    checkpoint: str = "best"


def members(runs, checkpoints) -> list[Member]:
    """The models run= and checkpoint= name, each one value or a list: one run and several checkpoints (an
    ensemble of one run's checkpoints), several runs and one checkpoint name (that checkpoint of each), or as
    many of both (paired in order)."""
    runs = [runs] if isinstance(runs, (str, Path)) else list(runs)
    checkpoints = [checkpoints] if isinstance(checkpoints, (str, Path)) else list(checkpoints)
    if not runs or not checkpoints:
        raise ValueError("run= and checkpoint= must each name at least one run folder / checkpoint")
    if len(runs) == 1:
        runs = runs * len(checkpoints)
    elif len(checkpoints) == 1:
        checkpoints = checkpoints * len(runs)
    elif len(runs) != len(checkpoints):
        raise ValueError(f"run= names {len(runs)} runs and checkpoint= {len(checkpoints)} checkpoints: give one "
                         f"checkpoint for all the runs, one for each, or several checkpoints of one run")
    return [Member(RunFolder(Path(str(r))), str(c)) for r, c in zip(runs, checkpoints)]


def load_run(run: str | Path, checkpoint: str | Path = "best", device: torch.device | None = None) -> LoadedRun:
    """(model in eval mode, tokenizer, checkpoint path) of a run folder written by seq2seq-train."""
    return RunFolder(Path(run)).load(checkpoint, device)
