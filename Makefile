# Thin targets: each calls the setup script, the CLI or a Dagster entry point.
PY := .venv/bin/python
CLI := .venv/bin/imagesearch

.PHONY: setup demo test ui lint bench

setup:  ## venvs (project + DVC tool venv) and the workspace; does nothing when already done
	bash scripts/setup.sh

demo: setup  ## fetch the default corpus and run the pipeline end to end through Dagster
	$(CLI) corpus fetch
	$(PY) -m dagster_project.run materialize --select image_catalog,baseline_model
	$(PY) -m dagster_project.run materialize --select image_embeddings --partition-range 0...f
	$(PY) -m dagster_project.run materialize --select search_index
	$(CLI) catalog summary
	$(CLI) search --text "a red apple" -k 5
	@echo ""
	@echo "Where to look:"
	@echo "  catalog + quarantine tables   the two paths above (parquet)"
	@echo "  data versions (DVC)           $(CLI) versions list catalog   (or: index)"
	@echo "  search from the shell         $(CLI) search --text 'a cat' | --image FILE.png"
	@echo "  Dagster UI (runs, metadata)   make ui  ->  http://127.0.0.1:3000"
	@echo "  everything resolved           $(CLI) doctor"

test: setup  ## the test suite
	$(PY) -m pytest -q

ui: setup  ## Dagster webserver + daemon on 127.0.0.1:3000
	$(PY) -m dagster_project.run ui

lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check .

bench:  ## benchmarks that print ratios against a peer measured in the same run (after make demo)
	IMAGESEARCH_BENCH=1 bash scripts/setup.sh
	$(CLI) corpus fetch
	$(PY) benchmarks/bench_catalog.py
	$(PY) benchmarks/bench_encoders.py
	$(PY) benchmarks/bench_backfill.py
	$(PY) benchmarks/bench_ann.py
