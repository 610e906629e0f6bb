"""Helpers the test modules share (conftest.py keeps only the fixtures): models, corpora, commands, training."""
