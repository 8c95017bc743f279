# shoprec — `make` alone lists the targets. Every target documents itself with a `## ` comment.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON   ?= python3
VENV     := .venv
BIN      := $(VENV)/bin
SHOPREC  := $(BIN)/shoprec
# The workspace a user works in: raw tables, features, MLflow store, Optuna study.
DATA     ?= workspace/shop
CUSTOMERS ?= 5000
ITEMS    ?= 2000
DAYS     ?= 180
SEED     ?= 42
MODELS   ?= popular als bpr itemknn ease bought-together repeat-blend sasrec
MODEL    ?= als
TRIALS   ?= 20
PORT     ?= 3000
# PyTorch goes in first from the CPU build on this disk; a bare `torch` would pull a multi-GB CUDA build.
TORCH    ?= torch==2.13.0

.PHONY: help install data features train tune promote retrain serve demo test bench lint clean chromium

help: ## list the targets (the default goal)
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo "  variables: DATA=$(DATA) CUSTOMERS=$(CUSTOMERS) ITEMS=$(ITEMS) SEED=$(SEED) MODELS='$(MODELS)'"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The stamp names what install produced, so make knows when it is up to date.
$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev]"
	touch $@

install: $(VENV)/.installed ## create .venv/ and install shoprec (PyTorch CPU build first)

$(DATA)/events.parquet: | $(VENV)/.installed
	$(SHOPREC) data generate --out $(DATA) --customers $(CUSTOMERS) --items $(ITEMS) --days $(DAYS) --seed $(SEED)

data: $(DATA)/events.parquet ## generate the synthetic shop into DATA (skipped when it exists)

features: install data ## validate, quarantine and build features for DATA
	$(SHOPREC) features build --data $(DATA)

# Extra `shoprec train` arguments for SASRec. The default keeps `make demo` to minutes on 2 cores
# (3 epochs, the split-trained model is the one served); a scheduler sets SASREC_ARGS= for the
# full schedule (30 epochs, refit on all data).
SASREC_ARGS ?= --set epochs=3 --no-refit

train: install ## train, evaluate and register every model in MODELS on DATA
	@for m in $(MODELS); do \
	  extra=""; [ "$$m" = sasrec ] && extra="$(SASREC_ARGS)"; \
	  $(SHOPREC) train --data $(DATA) --model $$m $$extra || exit 1; \
	done

tune: install ## Optuna study for MODEL with TRIALS trials (each trial an MLflow run)
	$(SHOPREC) tune --data $(DATA) --model $(MODEL) --trials $(TRIALS)

promote: install ## move the `champion` alias to the best version, if it beats the current one
	$(SHOPREC) promote --data $(DATA)

retrain: features train promote ## features -> train every model -> promote (what a scheduler runs)

serve: install ## serve the champion on http://127.0.0.1:PORT (default 3000)
	$(SHOPREC) serve --data $(DATA) --port $(PORT)

# The demo's API key (write endpoints and the /ui pages): SHOPREC_API_KEY when set, else a new
# random one per `make demo`, printed with the page's address.
demo: retrain ## install, generate the synthetic shop, build features, train, promote and serve
	@key="$${SHOPREC_API_KEY:-$$($(BIN)/python -c 'import secrets; print(secrets.token_urlsafe(12))')}"; \
	  $(SHOPREC) demo-curls --port $(PORT) --data $(DATA) --api-key "$$key" || true; \
	  SHOPREC_API_KEY="$$key" $(SHOPREC) serve --data $(DATA) --port $(PORT)

# The browser tests drive Debian's Chromium (Playwright cannot download a browser here). Installed
# when missing and possible (root, apt); without it those tests skip and say why.
chromium:
	@command -v chromium >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }; } || \
	  echo "chromium not installable here: the browser tests (tests/test_ui.py) will skip"

test: install chromium ## install what the tests need (Chromium for the page tests included) and run them
	$(BIN)/python -m pytest -q

bench: install ## run the benchmarks; results as JSON under benchmarks/results/
	@command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; } || echo "wrk not installable: serving load test falls back to the Python load generator"
	$(BIN)/python -m benchmarks.run

lint: install ## ruff
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean: ## remove derived data (keeps raw tables) and caches
	rm -rf $(DATA)/validated $(DATA)/quarantine $(DATA)/features .pytest_cache .ruff_cache
