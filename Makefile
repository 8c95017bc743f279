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
MODELS   ?= popular als bpr itemknn ease bought-together repeat-blend tifu next-basket sasrec
MODEL    ?= als
TRIALS   ?= 20
PORT     ?= 3000
MLFLOW_PORT ?= 5000
OPTUNA_PORT ?= 8080
# Where `make` keeps each command's JSON result line (the line a scheduler parses), so the terminal
# shows the tables meant for a person instead of a hundred metrics per model.
RESULTS  := $(DATA)/results
# PyTorch goes in first from the CPU build on this disk; a bare `torch` would pull a multi-GB CUDA build.
TORCH    ?= torch==2.13.0

.PHONY: help install java chromium data features train tune promote retrain serve demo test bench bench-scale \
	lint clean notebooks mlflow-ui optuna-dashboard

help: ## list the targets (the default goal)
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-17s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo "  variables: DATA=$(DATA) CUSTOMERS=$(CUSTOMERS) ITEMS=$(ITEMS) SEED=$(SEED) MODELS='$(MODELS)' MODEL=$(MODEL) TRIALS=$(TRIALS) PORT=$(PORT) MLFLOW_PORT=$(MLFLOW_PORT) OPTUNA_PORT=$(OPTUNA_PORT)"

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
	@mkdir -p $(RESULTS)
	$(SHOPREC) features build --data $(DATA) > $(RESULTS)/features.json
	@echo "JSON result: $(RESULTS)/features.json"

# Extra `shoprec train` arguments for SASRec. The default keeps `make demo` to minutes on 2 cores
# (3 epochs, the split-trained model is the one served); a scheduler sets SASREC_ARGS= for the
# full schedule (30 epochs, refit on all data).
SASREC_ARGS ?= --set epochs=3 --no-refit

# One model that fails (or cannot take the catalogue) never stops the others. Each model's JSON line
# goes to RESULTS/train-<model>.json and RESULTS/train-results.jsonl (the terminal shows each run's
# table); the run ends with a summary of failures and fit warnings (EASE fitted on a big
# catalogue's top items, ...); the exit status is 1 when a model failed.
train: install ## train, evaluate and register every model in MODELS on DATA (summary: RESULTS/train-results.jsonl)
	@mkdir -p $(RESULTS); results="$(RESULTS)/train-results.jsonl"; : > "$$results"; failed=""; \
	for m in $(MODELS); do \
	  extra=""; [ "$$m" = sasrec ] && extra="$(SASREC_ARGS)"; \
	  echo "$(SHOPREC) train --data $(DATA) --model $$m $$extra > $(RESULTS)/train-$$m.json"; \
	  if $(SHOPREC) train --data $(DATA) --model $$m $$extra > "$(RESULTS)/train-$$m.json"; then \
	    tail -n 1 "$(RESULTS)/train-$$m.json" >> "$$results"; \
	  else \
	    failed="$$failed $$m"; echo "{\"model\": \"$$m\", \"error\": \"shoprec train failed (log above)\"}" >> "$$results"; \
	  fi; \
	done; \
	echo "== train summary: $(words $(MODELS)) models, failed:$${failed:- none}; JSON results: $$results; every metric, plot and model card: make mlflow-ui" >&2; \
	grep -h '"warnings"' "$$results" | sed 's/.*"model": "\([^"]*\)".*"warnings": \(.*\)}$$/== warning \1: \2/' >&2; \
	[ -z "$$failed" ]

tune: install ## Optuna study for MODEL with TRIALS trials (each trial an MLflow run)
	@mkdir -p $(RESULTS)
	$(SHOPREC) tune --data $(DATA) --model $(MODEL) --trials $(TRIALS) > $(RESULTS)/tune-$(MODEL).json
	@echo "JSON result: $(RESULTS)/tune-$(MODEL).json; the study's plots: make optuna-dashboard"

promote: install ## move the `champion` alias to the best version, if it beats the current one
	@mkdir -p $(RESULTS)
	$(SHOPREC) promote --data $(DATA) > $(RESULTS)/promote.json
	@echo "JSON result: $(RESULTS)/promote.json"

# A failed model does not stop the promotion of the best of the others; the run still exits 1 then.
retrain: features ## features -> train every model -> promote (what a scheduler runs)
	@$(MAKE) --no-print-directory train; status=$$?; \
	$(SHOPREC) promote --data $(DATA) && exit $$status

serve: install ## serve the champion on http://127.0.0.1:PORT (default 3000)
	$(SHOPREC) serve --data $(DATA) --port $(PORT)

# The demo's API key (write endpoints and the /ui pages): SHOPREC_API_KEY when set, else a new
# random one per `make demo`, printed with the page's address.
demo: retrain ## install, generate the synthetic shop, build features, train, promote and serve
	@key="$${SHOPREC_API_KEY:-$$($(BIN)/python -c 'import secrets; print(secrets.token_urlsafe(12))')}"; \
	  $(SHOPREC) demo-curls --port $(PORT) --data $(DATA) --api-key "$$key" || true; \
	  SHOPREC_API_KEY="$$key" $(SHOPREC) serve --data $(DATA) --port $(PORT)

# Spark (`features build --engine spark` and its parity tests) needs Java 17: Debian's headless JRE.
java: ## install Java 17 for Spark when `java` is missing (apt-get; Debian/Ubuntu as root)
	@command -v java >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless >/dev/null; } \
	  || echo "Java 17 could not be installed: the Spark tests will skip, --engine spark will not run"

# The browser tests drive Debian's Chromium (Playwright cannot download a browser here). Installed
# when missing and possible (root, apt); without it those tests skip and say why.
chromium:
	@command -v chromium >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }; } || \
	  echo "chromium not installable here: the browser tests (tests/test_ui.py) will skip"

test: install java chromium ## install what the tests need (Java for Spark, Chromium for the pages) and run them
	$(BIN)/python -m pytest -q

notebooks: install ## execute every notebook on a small synthetic shop; writes notebooks/NN_*.ipynb with outputs
	$(BIN)/python notebooks/execute.py

# The stores are the workspace's own SQLite files; with MLFLOW_TRACKING_URI set (a team server) open
# that server instead. Both listen on 127.0.0.1 only.
mlflow-ui: install ## MLflow's UI for DATA's runs, registry, plots and model cards on http://127.0.0.1:MLFLOW_PORT
	@test -f $(DATA)/mlflow.db || { echo "no MLflow store at $(DATA)/mlflow.db: run make train first"; exit 2; }
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(abspath $(DATA))/mlflow.db \
	  --default-artifact-root file://$(abspath $(DATA))/mlartifacts \
	  --host 127.0.0.1 --port $(MLFLOW_PORT) --workers 1

optuna-dashboard: install ## optuna-dashboard for DATA's studies on http://127.0.0.1:OPTUNA_PORT
	@test -f $(DATA)/optuna.db || { echo "no Optuna study at $(DATA)/optuna.db: run make tune first"; exit 2; }
	$(BIN)/optuna-dashboard sqlite:///$(abspath $(DATA))/optuna.db --host 127.0.0.1 --port $(OPTUNA_PORT)

bench: install ## run the benchmarks; results as JSON under benchmarks/results/
	@command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; } || echo "wrk not installable: serving load test falls back to the Python load generator"
	$(BIN)/python -m benchmarks.run

# Where bench-scale writes its shops (tens of GB at 100M events); deleted by the benchmark's --clean.
SCALE_DIR ?= /tmp/shoprec-scale

bench-scale: install java ## the scale run: features at 10M-100M events (DuckDB; Spark at 10M); 1M customers end to end (ALS, feed, service) -> benchmarks/results/scale.json
	@command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
	nice $(BIN)/python -m benchmarks.bench_scale --work $(SCALE_DIR)

lint: install ## ruff
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean: ## remove derived data (keeps raw tables) and caches
	rm -rf $(DATA)/validated $(DATA)/quarantine $(DATA)/features $(DATA)/results $(DATA)/.cache notebooks/*.ipynb .pytest_cache .ruff_cache
