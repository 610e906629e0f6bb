"""The errors seq2seq raises on purpose, in one light module (no torch): the command line (seq2seq.cli) maps
them to exit codes without importing what raises them."""
from __future__ import annotations


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable or made for another model."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (full disk, quota, I/O error); the previous file at its path,
    if any, is untouched."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


class PeerFailure(RuntimeError):
    """A collective operation failed: another rank died, was killed or stopped answering."""
