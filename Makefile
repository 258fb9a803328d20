# Thin targets: each calls the setup script, the CLI or a Dagster entry point.
PY := .venv/bin/python
CLI := .venv/bin/imagesearch
# The demo's judgments: drafted by rule for the default corpus (scripts/draft_judgments.py), standing in
# for a labelers' file; absolute because DVC stages run inside the workspace.
DEMO_JUDGMENTS := IMAGESEARCH_TRAINING_DATA__JUDGMENTS_PATH=$(CURDIR)/examples/openclipart-judgments.csv
TRAINING_ASSETS := augmentation_pairs,classifier_pairs,tag_pairs,judgment_pairs,click_pairs,training_examples,trained_model
EVALUATION_ASSETS := eval_sets,offline_evaluation
# the online experiment of the demo: simulated users (held-out queries, graded over the whole catalog), marked simulated
DEMO_EXPERIMENT := IMAGESEARCH_EXPERIMENT__INTERLEAVE_SHARE=0.6 IMAGESEARCH_EXPERIMENT__SHADOW_SHARE=0.1 IMAGESEARCH_EXPERIMENT__SWAP_SHARE=0.2

.PHONY: setup demo test up ui serve mlflow lint bench ablation reliability

setup:  ## venvs (project + DVC tool venv) and the workspace; does nothing when already done
	bash scripts/setup.sh

demo: setup  ## fetch the default corpus and run the pipeline end to end through Dagster
	$(CLI) corpus fetch
	$(PY) -m dagster_project.run materialize --select image_catalog,baseline_model
	$(PY) -m dagster_project.run materialize --select image_embeddings --partition-range 0...f
	$(PY) -m dagster_project.run materialize --select search_index
	$(DEMO_JUDGMENTS) $(PY) -m dagster_project.run materialize --select $(TRAINING_ASSETS)
	$(DEMO_JUDGMENTS) $(PY) -m dagster_project.run materialize --select $(EVALUATION_ASSETS)
	@# the online stage: the challenger's own index, simulated users on both rankers, the experiment
	$(PY) -m dagster_project.run materialize --select challenger_index
	$(DEMO_EXPERIMENT) $(CLI) clicks traffic --sessions 2000
	$(DEMO_JUDGMENTS) $(PY) -m dagster_project.run materialize --select online_experiment,model_promotion
	@# what champion_sensor + index_after_embeddings do when the daemon runs: embed with the champion, re-index
	$(PY) -m dagster_project.run materialize --select image_embeddings --partition-range 0...f
	$(PY) -m dagster_project.run materialize --select search_index
	$(CLI) catalog summary
	$(CLI) evaluate show
	$(CLI) search --text "a red apple" -k 5
	@echo ""
	@echo "Where to look:"
	@echo "  catalog + quarantine tables   the two paths above (parquet)"
	@echo "  data versions (DVC)           $(CLI) versions list catalog   (or: index, training_examples, train)"
	@echo "  training runs, challenger     make mlflow  ->  http://127.0.0.1:5000"
	@echo "  evaluation table + plots      $(CLI) evaluate show; .imagesearch/data/evaluation/*.png"
	@echo "  the search page               make serve  ->  http://127.0.0.1:8000"
	@echo "  search from the shell         $(CLI) search --text 'a cat' | --image FILE.png"
	@echo "  Dagster UI (runs, metadata)   make ui  ->  http://127.0.0.1:3000"
	@echo "  everything resolved           $(CLI) doctor"

test: setup  ## the test suite
	$(PY) -m pytest -q

ablation: setup  ## one model per training recipe (or source), reduced budget, in- and out-of-domain table (after make demo)
	$(DEMO_JUDGMENTS) $(PY) -m dagster_project.run materialize --select ablation_study
	cat .imagesearch/data/ablation/table.md

up: setup  ## Dagster webserver + daemon (index sensors on), MLflow UI and the search service, supervised (after make demo)
	$(CLI) up

ui: setup  ## Dagster webserver + daemon on 127.0.0.1:3000
	$(PY) -m dagster_project.run ui

serve: setup  ## the search service on 127.0.0.1:8000 over the workspace index (after make demo)
	$(CLI) serve

mlflow: setup  ## MLflow UI on 127.0.0.1:5000 over the workspace's tracking store and registry
	.venv/bin/mlflow ui --host 127.0.0.1 --port 5000 --backend-store-uri "$$($(PY) -c 'from imagesearch.settings import Settings; print(Settings().mlflow_tracking_uri)')"

lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check .

reliability: setup  ## hostile HTTP (OpenAPI fuzz, image bombs) against a real server under load: 5xx, peak RSS
	$(PY) benchmarks/reliability.py

bench:  ## benchmarks that print ratios against a peer measured in the same run (after make demo)
	IMAGESEARCH_BENCH=1 bash scripts/setup.sh
	$(CLI) corpus fetch
	$(PY) benchmarks/bench_catalog.py
	$(PY) benchmarks/bench_encoders.py
	$(PY) benchmarks/bench_text_threads.py
	$(PY) benchmarks/bench_page.py
	$(PY) benchmarks/bench_backfill.py
	$(PY) benchmarks/bench_ann.py
	$(PY) benchmarks/bench_service.py
	$(PY) benchmarks/bench_service.py --paired 300 --out benchmarks/results/service-paired.json
	$(PY) benchmarks/bench_live_update.py
	$(PY) benchmarks/eval_modes.py
	$(PY) benchmarks/eval_raw_transforms.py
	$(PY) benchmarks/bench_interleaving.py
	$(PY) benchmarks/bench_ray.py --images 512
