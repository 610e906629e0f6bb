# Two commands do everything on a fresh machine:
#   make demo   installs, trains a short Multi30k run, decodes the test set and scores it
#   make test   installs and runs the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
DEMO_STEPS ?= 300
DEMO_RUN ?= outputs/demo
SEQ2SEQ_DATA ?= $(abspath ../shared/data)
export SEQ2SEQ_DATA

.PHONY: install demo test clean

$(BIN)/seq2seq-train: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

install: $(BIN)/seq2seq-train

demo: install
	$(BIN)/seq2seq-train recipe=multi30k_en_de_transformer trainer.max_steps=$(DEMO_STEPS) \
		trainer.valid_every=$(DEMO_STEPS) trainer.valid_max_sentences=200 run_dir=$(DEMO_RUN)
	$(BIN)/seq2seq-decode run=$(DEMO_RUN) input=$(SEQ2SEQ_DATA)/multi30k/test_2016_flickr.en \
		output=$(DEMO_RUN)/test_2016_flickr.hyp.de generation.beam_size=5
	$(BIN)/seq2seq-score hyp=$(DEMO_RUN)/test_2016_flickr.hyp.de \
		ref=$(SEQ2SEQ_DATA)/multi30k/test_2016_flickr.de metrics=[bleu,chrf]

test: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) build *.egg-info
