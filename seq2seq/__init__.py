"""seq2seq: neural machine translation and abstractive summarization in PyTorch."""

__version__ = "0.1.0"
