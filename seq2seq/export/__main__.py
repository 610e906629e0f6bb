"""python -m seq2seq.export: the seq2seq-export command."""
from seq2seq.cli.export import main

main()
