"""How the four commands report errors: one line on stderr, `seq2seq-<command>: error: <message>`.

Every entry point (seq2seq.cli.<command>, the console scripts) is built the same way::

    def _work(cfg):
        from seq2seq.decode import decode  # lazy: --help and config errors answer without importing torch

        decode(cfg)

    main = entry_point("decode", _work)

The work itself lives in seq2seq.train, seq2seq.decode, seq2seq.score, seq2seq.average, seq2seq.export and
seq2seq.serve; `python -m seq2seq.<command>` runs the same entry point.

Exit codes:

* 2: a usage or input error, i.e. something the user gave is wrong: a command-line or config error
  (an unknown key, a bad override, a missing mandatory value, an unresolvable interpolation), a
  missing or unreadable file or folder, bad input data (invalid UTF-8, malformed JSON Lines, line
  counts that differ), a corrupt or incompatible checkpoint (CheckpointError), or any other
  ValueError raised by seq2seq's own code (its checks of settings and data).
* 1: the work started and then failed for a known reason: training diverged (FloatingPointError),
  a distributed peer was lost (PeerFailure), out of (GPU) memory, another OS error (disk full).
  Anything else is unexpected (a bug): it keeps its full Python traceback, and Python exits with 1.
* seq2seq-train stopped by SIGTERM or SIGINT exits with 128 + the signal's number (see seq2seq.train).

With the environment variable HYDRA_FULL_ERROR=1 nothing is shortened: every error shows its full
traceback (Hydra's own convention).

Hydra wraps the task function itself (it prints "Error executing job ..." and a shortened traceback),
so errors are caught in two places: inside the task function (Command.task), before Hydra sees them,
and around Hydra (Command.run), for errors in composing the config, before the task function runs.
Command.run sets HYDRA_FULL_ERROR=1 while Hydra runs so that Hydra re-raises those instead of
printing them.
"""
from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Any, Callable

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf import errors as oc

from seq2seq.config import config_dir
from seq2seq.errors import CheckpointError, PeerFailure

FULL_ERROR = "HYDRA_FULL_ERROR"
USAGE = 2    # exit code of a usage or input error
FAILURE = 1  # exit code of a known failure during the work
_PACKAGE = Path(__file__).resolve().parents[1]  # seq2seq/


def full_error_wanted() -> bool:
    return os.environ.get(FULL_ERROR) == "1"


class Command:
    """The error handling of one seq2seq-<name> command (see the module docstring)."""

    def __init__(self, name: str, config_name: str | None = None):
        self.name, self.prog = config_name or name, f"seq2seq-{name}"
        self._full: bool | None = None   # what the user asked for, read before run() sets HYDRA_FULL_ERROR
        self._task_started = False

    def task(self, function: Callable[[Any], Any]) -> Callable[[Any], Any]:
        """Decorate the Hydra task function (under @hydra.main) to report expected errors in one line."""

        @functools.wraps(function)
        def wrapper(cfg):
            self._task_started = True
            full = self._full if self._full is not None else full_error_wanted()
            if full:
                check_root_keys(cfg, self.name)
                return function(cfg)
            try:
                check_root_keys(cfg, self.name)
                return function(cfg)
            except Exception as err:
                code = exit_code(err)
                if code is None:
                    raise
                self.fail(err, code)

        return wrapper

    def run(self, hydra_main: Callable[[], Any]) -> Any:
        """Call the @hydra.main function; config composition errors become one line and exit code 2."""
        self._full = full_error_wanted()
        if self._full:
            return hydra_main()
        self._task_started = False
        previous = os.environ.get(FULL_ERROR)
        os.environ[FULL_ERROR] = "1"  # Hydra then re-raises composition errors instead of printing them
        try:
            return hydra_main()
        except Exception as err:
            if self._task_started or not isinstance(err, (HydraException, oc.OmegaConfBaseException, ValueError)):
                raise  # an unexpected error (a bug), or one the task function let through: full traceback
            self.fail(err, USAGE)
        finally:
            if previous is None:
                os.environ.pop(FULL_ERROR, None)
            else:
                os.environ[FULL_ERROR] = previous

    def fail(self, err: BaseException, code: int):
        try:
            sys.stdout.flush()  # what was printed so far comes before the error
        except OSError:
            pass
        sys.stderr.write(f"{self.prog}: error: {one_line(err)}\n")
        sys.stderr.flush()
        sys.exit(code)


def entry_point(name: str, work: Callable[[DictConfig], Any], config_name: str | None = None) -> Callable[[], None]:
    """The main() of seq2seq-<name>: Hydra composes conf/<config_name or name>.yaml with the command line,
    work(cfg) runs, and errors are reported as this module says."""
    command = Command(name, config_name)

    @hydra.main(version_base="1.3", config_path=config_dir(), config_name=config_name or name)
    @command.task
    def _hydra_main(cfg: DictConfig) -> None:
        work(cfg)

    def main() -> None:
        command.run(_hydra_main)

    return main


def check_root_keys(cfg, name: str) -> None:
    """Refuse a top-level key that the command's config (conf/<name>.yaml and its groups) does not
    have, e.g. one added with +key=...; keys inside the groups are checked where each group is used."""
    primary = OmegaConf.load(Path(config_dir()) / f"{name}.yaml")
    known = {k for k in primary if k not in ("defaults", "hydra")}
    for entry in primary.get("defaults", []):
        group = next(iter(entry)) if isinstance(entry, dict) or OmegaConf.is_dict(entry) else str(entry)
        if not group.startswith("override ") and group != "_self_":
            known.add(group.split("/")[0])
    unknown = sorted(set(cfg) - known - {"hydra"})
    if unknown:
        raise ValueError(f"unknown setting(s): {', '.join(unknown)} (known at the top level: {', '.join(sorted(known))})")


def exit_code(err: BaseException) -> int | None:
    """USAGE or FAILURE for an expected error raised while a command works; None for an unexpected one."""
    if isinstance(err, (CheckpointError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError,
                        UnicodeDecodeError, oc.MissingMandatoryValue, oc.InterpolationResolutionError,
                        oc.ValidationError, oc.KeyValidationError, oc.ConfigValueError, oc.GrammarParseError)):
        return USAGE
    if isinstance(err, ValueError) and _raised_by_seq2seq(err):
        return USAGE  # DataError and the checks of settings and data
    if isinstance(err, (FloatingPointError, PeerFailure, OSError)) or type(err).__name__ == "OutOfMemoryError":
        return FAILURE
    return None


def _raised_by_seq2seq(err: BaseException) -> bool:
    """Whether the innermost frame of err's traceback is in this package (not in a library)."""
    tb = err.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    try:
        Path(tb.tb_frame.f_code.co_filename).resolve().relative_to(_PACKAGE)
    except ValueError:
        return False
    return True


def one_line(err: BaseException) -> str:
    """err's message on one line. Hydra's and OmegaConf's messages span several: indented detail lines
    (OmegaConf's full_key/object_type) are dropped, except a list under a line that ends with ':',
    which is joined into it (but not Hydra's config search path); a Hydra error adds the first line
    of its OmegaConf cause."""
    parts = _message_parts(str(err))
    cause = err.__cause__
    if isinstance(cause, oc.OmegaConfBaseException) and str(cause).strip():
        parts.append(_message_parts(str(cause))[0])
    message = " ".join(p if p.endswith((".", ":", ";", "!", "?")) or i == len(parts) - 1 else p + "."
                       for i, p in enumerate(parts))
    return message or type(err).__name__


def _message_parts(text: str) -> list[str]:
    parts: list[str] = []
    listing = False  # inside an indented list under a line ending with ':'
    for line in text.splitlines():
        if not line.strip():
            continue
        if line.startswith("Config search path:"):  # Hydra's list of where it looked: noise in one line
            break
        if line[:1].isspace():
            if parts and (parts[-1].endswith(":") or listing):
                parts[-1] += ("" if parts[-1].endswith(":") else ",") + " " + line.strip()
                listing = True
            continue
        parts.append(line.strip())
        listing = False
    return parts or [text.strip()]


def command_line_overrides(generation: dict | None = None) -> list[str]:
    """The command line's overrides (Hydra's task overrides). Called without Hydra (from Python), every key of
    `generation` counts as set on the command line (generation.<key>)."""
    if HydraConfig.initialized():
        return list(HydraConfig.get().overrides.task)
    return [f"generation.{key}" for key in generation or {}]
