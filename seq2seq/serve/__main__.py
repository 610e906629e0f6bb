"""python -m seq2seq.serve: the seq2seq-serve command."""
from seq2seq.cli.serve import main

main()
