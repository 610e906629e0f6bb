# Two commands do everything on a fresh machine:
#   make demo   installs, trains a short Multi30k run, decodes the test set and scores it
#   make test   installs and runs the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
DEMO_STEPS ?= 300
DEMO_RUN ?= outputs/demo
# The local corpora: ../shared/data when it exists; empty means the Hugging Face hub.
SEQ2SEQ_DATA ?= $(if $(wildcard ../shared/data/multi30k),$(abspath ../shared/data),)
export SEQ2SEQ_DATA
TEST_SRC := $(if $(SEQ2SEQ_DATA),$(SEQ2SEQ_DATA)/multi30k/test_2016_flickr.en,$(DEMO_RUN)/test.en)
TEST_REF := $(if $(SEQ2SEQ_DATA),$(SEQ2SEQ_DATA)/multi30k/test_2016_flickr.de,$(DEMO_RUN)/test.de)

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
	$(if $(SEQ2SEQ_DATA),,$(BIN)/python -c "from seq2seq.data.corpus import load_split; \
		c = load_split('test', root=None, path='', format='text', src='en', tgt='de', splits={}, \
		hub_id='bentrevett/multi30k', hub_splits={'test': 'test'}); \
		open('$(TEST_SRC)', 'w').write(''.join(x + '\n' for x in c.src)); \
		open('$(TEST_REF)', 'w').write(''.join(x + '\n' for x in c.tgt))")
	$(BIN)/seq2seq-decode run=$(DEMO_RUN) input=$(TEST_SRC) output=$(DEMO_RUN)/test.hyp.de generation.beam_size=5
	$(BIN)/seq2seq-score hyp=$(DEMO_RUN)/test.hyp.de ref=$(TEST_REF) metrics=[bleu,chrf]

test: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) build *.egg-info
