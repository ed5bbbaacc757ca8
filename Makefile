# Entry points of the project. Everything runs from the project's own virtualenv (.venv).
# Configuration comes from environment variables (see README.md, "Configuration").

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
IMAGES ?=
METADATA ?=
INDEX_ARGS ?=
# A fine-tuned model for `make index` (its directory or model version); `make finetune` writes
# one into MODEL_OUT (default: var/models/<folder>-<UTC time>).
MODEL ?=
MODEL_OUT ?=
FINETUNE_ARGS ?=
# `make quantize`: an int8 model of MODEL (default: the base model) calibrated on IMAGES.
QUANTIZE_ARGS ?=
# `make backup` / `make restore`: the backup folder (default IMGSEARCH_BACKUP_DIR) and restore's
# options.
DIR ?=
RESTORE_ARGS ?=

export PYTHONPATH := $(CURDIR)

.PHONY: help setup venv weights es-fetch es-up es-down es-status index watch search serve demo test lint backup restore \
        finetune quantize quantize-bench bench-int8 bench-api-runtimes bench-regions bench-regions-design bench-cluster bench-duplicates bench-feedback bench-explain bench-finetune bench-quality bench-indexing bench-resize bench-api bench-embedding bench-bf16 \
        bench-scale bench-scale-1m bench-tags bench-words bench-stages bench-int8-variants bench-live

help:
	@echo "make setup                      venv, ImageNet weights, Elasticsearch distribution"
	@echo "make es-up | es-down | es-status [NODES=3]   local Elasticsearch node (or cluster) on 127.0.0.1:9200"
	@echo "make index IMAGES=<dir> [METADATA=<csv|jsonl>] [MODEL=<model dir>] [REGIONS=standard|fine] [INDEX_ARGS=--new-index]"
	@echo "make watch IMAGES=<dir> [METADATA=<csv|jsonl>] [MODEL=<model>] [WATCH_ARGS=...]   index, then follow changes"
	@echo "make finetune IMAGES=<dir> [METADATA=<csv|jsonl>] [MODEL_OUT=<dir>]   domain model"
	@echo "make quantize IMAGES=<dir> [MODEL=<model>] [MODEL_OUT=<dir>]   int8 model (OpenVINO)"
	@echo "make search IMAGE=<file>        nearest indexed images"
	@echo "make backup [DIR=<dir>] | restore [DIR=<dir>] [RESTORE_ARGS=--replace|--snapshot NAME|--list]   (IMGSEARCH_BACKUP_DIR)"
	@echo "make serve                      web app on http://127.0.0.1:8000 (nginx + gunicorn)"
	@echo "make demo IMAGES=<dir>          setup + es-up + index + serve"
	@echo "make test                       the test suite (starts its own throwaway node)"
	@echo "make lint                       ruff"
	@echo "make bench-finetune | bench-quality | bench-indexing | bench-resize | bench-api | bench-embedding"
	@echo "     bench-bf16 | bench-int8 | bench-api-runtimes | bench-regions | bench-cluster | bench-duplicates | bench-feedback | bench-explain | bench-scale | bench-scale-1m | bench-tags | bench-words | bench-stages | bench-int8-variants | bench-live"
	@echo "     (docs/BENCHMARKS.md; quantize-bench makes the int8 model the runtime tables add)"

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

venv: $(VENV)/.installed

weights: venv
	$(PY) -m imgsearch.weights

es-fetch: venv
	$(PY) -m imgsearch.localnode fetch

setup: venv weights es-fetch

es-up: es-fetch
	$(PY) -m imgsearch.localnode start $(if $(NODES),--nodes $(NODES))

es-down: venv
	$(PY) -m imgsearch.localnode stop $(if $(NODES),--nodes $(NODES))

es-status: venv
	$(PY) -m imgsearch.localnode status $(if $(NODES),--nodes $(NODES))

index: venv
	@test -n "$(IMAGES)" || (echo "usage: make index IMAGES=<dir> [METADATA=<file>]"; exit 2)
	$(PY) -m indexer "$(IMAGES)" $(if $(METADATA),--metadata "$(METADATA)") \
	  $(if $(MODEL),--model "$(MODEL)") $(if $(REGIONS),--regions $(REGIONS)) $(INDEX_ARGS)

watch: venv
	@test -n "$(IMAGES)" || (echo "usage: make watch IMAGES=<dir> [METADATA=<file>]"; exit 2)
	$(PY) -m indexer watch "$(IMAGES)" $(if $(METADATA),--metadata "$(METADATA)") \
	  $(if $(MODEL),--model "$(MODEL)") $(if $(REGIONS),--regions $(REGIONS)) $(WATCH_ARGS)

quantize: venv weights
	@test -n "$(IMAGES)" || (echo "usage: make quantize IMAGES=<dir> [MODEL=<model>] [MODEL_OUT=<dir>]"; exit 2)
	$(PY) -m indexer quantize "$(IMAGES)" $(if $(MODEL),--model "$(MODEL)") \
	  $(if $(MODEL_OUT),--out "$(MODEL_OUT)") $(QUANTIZE_ARGS)

finetune: venv weights
	@test -n "$(IMAGES)" || (echo "usage: make finetune IMAGES=<dir> [METADATA=<file>] [MODEL_OUT=<dir>]"; exit 2)
	$(PY) -m indexer finetune "$(IMAGES)" $(if $(METADATA),--metadata "$(METADATA)") \
	  $(if $(MODEL_OUT),--out "$(MODEL_OUT)") $(FINETUNE_ARGS)

search: venv
	@test -n "$(IMAGE)" || (echo "usage: make search IMAGE=<file>"; exit 2)
	$(PY) -m indexer search "$(IMAGE)" -k 10

# Backups (README.md, "Backing up and restoring"): DIR under IMGSEARCH_BACKUP_DIR, default it.
backup: venv
	$(PY) -m indexer backup $(if $(DIR),"$(DIR)")

restore: venv
	$(PY) -m indexer restore $(if $(DIR),"$(DIR)") $(RESTORE_ARGS)

# nginx in front of gunicorn (webapp/serve.py; README.md, "Limits"): both start and stop here.
# Loopback only (127.0.0.1), so reads are public by default; IMGSEARCH_PUBLIC_READ=0 make serve
# requires keys (README, "Keys").
serve: venv
	IMGSEARCH_PUBLIC_READ=$${IMGSEARCH_PUBLIC_READ:-1} $(PY) -m webapp.serve

demo: setup es-up
	@test -n "$(IMAGES)" || (echo "usage: make demo IMAGES=<dir> [METADATA=<file>]"; exit 2)
	$(MAKE) index IMAGES="$(IMAGES)" METADATA="$(METADATA)" INDEX_ARGS="$(INDEX_ARGS)" || test $$? -eq 3
	$(MAKE) serve

test: setup
	$(PY) -m pytest

lint: venv
	$(VENV)/bin/ruff check .

# Benchmarks: each prints what docs/BENCHMARKS.md records. They need `make es-up` (all but
# bench-resize) and, for bench-api, `make serve` running.
DATASET ?= $(or $(IMGSEARCH_DATASETS_DIR),../shared/datasets)/clothing-small

bench-finetune: venv
	mkdir -p var
	$(PY) -m bench.finetune --dataset $(DATASET) --json var/bench-finetune.jsonl

bench-quality: venv
	$(PY) -m bench.quality --dataset $(DATASET) --split test

# The int8 model that the runtime benchmarks add to their tables (make quantize-bench makes it).
INT8 ?= var/models/base-int8
WITH_INT8 = $(if $(wildcard $(INT8)/model_card.json),--int8 $(INT8))

quantize-bench: venv weights
	$(PY) -m indexer quantize $(DATASET)/images/train --out $(INT8) --force

bench-int8: venv
	$(PY) -m bench.int8 --dataset $(DATASET) --int8 $(INT8)

bench-indexing: venv
	$(PY) -m bench.indexing --images $(DATASET)/images $(WITH_INT8)

bench-resize: venv
	$(PY) -m bench.resize_modes --dataset $(DATASET) --split test

bench-embedding: venv
	$(PY) -m bench.embedding --images $(DATASET)/images/test --rounds 2 $(WITH_INT8)

bench-bf16: venv
	$(PY) -m bench.bf16 --dataset $(DATASET) --split test

# Region search through the indexer and the search service (needs es-up; ~15 min), and the
# measurements that chose its design (exact search, no ES; ~7 min): docs/BENCHMARKS.md.
bench-regions: venv
	$(PY) -m bench.regions --images $(DATASET)/images/test --modes standard fine --queries 200

# A 3-node cluster's formation and recovery, 1 vs 3 shards, bytes per vector, and the Ray
# indexer against the local one (needs es-fetch, and es-up for the Ray part; ~20 min).
bench-cluster: venv
	$(PY) -m bench.cluster --dataset $(DATASET)

# Near-duplicate groups: copies of 120 clothing photos among the test split's 372, pair
# precision and recall per threshold (a throwaway node; ~10 min): docs/BENCHMARKS.md.
bench-duplicates: venv
	$(PY) -m bench.duplicates --images $(DATASET)/images/test --originals 120

bench-tags: venv
	$(PY) -m bench.tags --dataset $(DATASET)

# Search by words: P@10 per word, and filter against re-rank with a photo (~1 min, no node):
# docs/BENCHMARKS.md, "Search by words".
bench-words: venv
	$(PY) -m bench.words --dataset $(DATASET)

# Each indexing stage's core-ms per photo and the pipeline's ceiling (~3 min, starts its own
# node): docs/BENCHMARKS.md, "Where an indexed photo's time goes".
bench-stages: venv
	$(PY) -m bench.stages --images $(DATASET)/images --pair-candidates 50 30 20

# int8 quantisation variants against strict fp32 (~6 min, no node): docs/BENCHMARKS.md,
# "int8 as the default?".
bench-int8-variants: venv weights
	$(PY) -m bench.int8_variants --dataset $(DATASET)

# A collection that lives: file-to-searchable through the watcher (single files and a burst of
# 1,000, renamed in and copied in), its rate against the indexer's, the pairs' upkeep a photo,
# POST /api/images, GET /api/duplicates at 100k synthetic vectors (needs make es-up; ~10 min on
# a quiet 2-core machine): docs/BENCHMARKS.md, "A collection that lives".
bench-live: venv
	mkdir -p var
	$(PY) -m bench.live --images $(DATASET)/images --json var/bench-live.json

# Relevance feedback: Rocchio weights chosen on the validation split, P@10 after one round of
# marks on the test split (needs make es-up; ~10 min): docs/BENCHMARKS.md.
bench-feedback: venv
	$(PY) -m bench.feedback --choose --dataset $(DATASET)

# Why it matched: exactness of the cosine's split and the explain API's latency (make es-up).
bench-explain: venv
	$(PY) -m bench.explain --dataset $(DATASET) --pairs 60

bench-regions-design: venv
	$(PY) -m bench.regions --design --images $(DATASET)/images/test --areas 1.5 2 --scales 2 3 --queries 200

bench-api-runtimes: venv
	$(PY) -m bench.api_runtimes --images $(DATASET)/images/test -n 120 $(WITH_INT8)

bench-api: venv
	$(PY) bench/api_latency.py --url http://127.0.0.1:8000 $(DATASET)/images/test -n 200 -k 10 -c 1
	$(PY) bench/api_latency.py --url http://127.0.0.1:8000 $(DATASET)/images/test -n 200 -k 10 -c 4

# 100k vectors in each index type (~8 min), then 1M in the quantised ones (~20 min each: the
# float graph is left out, see docs/BENCHMARKS.md). Results are appended as JSON lines to var/.
bench-scale: venv
	mkdir -p var
	$(PY) -m bench.scale --sizes 100000 --types hnsw int8_hnsw bbq_hnsw \
	  --num-candidates 100 200 --out var/bench-scale.jsonl

bench-scale-1m: venv
	mkdir -p var
	$(PY) -m bench.scale --sizes 1000000 --types int8_hnsw bbq_hnsw \
	  --num-candidates 100 200 500 --oversample 3 10 --out var/bench-scale.jsonl
