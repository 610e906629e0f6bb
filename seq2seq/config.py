"""Where the Hydra configs live, and the few helpers that turn config nodes into constructor arguments.

Configuration flows one way: Hydra composes `conf/` (+ a recipe + overrides) in struct
mode, so an unknown key is an error at the command line; the entry points pass plain
values to constructors, and nothing below them reads global config.
"""
from __future__ import annotations

import logging
import sys
from dataclasses import fields
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf


def config_dir() -> str:
    """The conf/ folder: inside the installed package (wheel) or beside it (source checkout)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parent / "conf"):
        if (candidate / "train.yaml").is_file():
            return str(candidate)
    raise FileNotFoundError(f"seq2seq configs not found next to {here}; reinstall the package")


def to_plain(value):
    """A config value as plain Python: lists and mappings resolved (ListConfig, DictConfig), scalars as they are."""
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def to_dict(node) -> dict:
    """A resolved plain dict of a config node (None stays None)."""
    if node is None:
        return {}
    if isinstance(node, DictConfig):
        return OmegaConf.to_container(node, resolve=True)
    return dict(node)


def check_keys(group: str, node: dict, known) -> None:
    """Refuse keys of a config group that nothing reads (e.g. added with +group.key=...), naming them."""
    unknown = sorted(set(node) - set(known))
    if unknown:
        raise ValueError(f"unknown {group} setting(s): {', '.join(f'{group}.{k}' for k in unknown)} "
                         f"(known: {', '.join(sorted(known))})")


def options_from(cls, group: str, node: dict):
    """cls(**node) for a dataclass of options, refusing a key that is not one of its fields."""
    check_keys(group, node, [f.name for f in fields(cls)])
    return cls(**node)


def setup_logging(rank: int = 0) -> None:
    """Log to stderr (stdout may carry decoded text); other ranks than 0 log warnings only."""
    level = logging.INFO if rank == 0 else logging.WARNING
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s" if rank == 0 else f"[rank {rank}] %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=level, format=fmt, datefmt="%H:%M:%S", stream=sys.stderr, force=True)
