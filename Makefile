VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

OPENCLIP_VENV ?= .venv-openclip

.PHONY: help install install-openclip test bench serve ui lint mutants

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

install: ## create .venv and install imgsearch with its test tools and ruff, the onnx/openvino backends, the evaluation chart and the OCR engine (CPU torch)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[test,dev,onnx,openvino,eval,ocr]'

install-openclip: ## a second venv for the open_clip model family's tests (torch 2.14.1 with torchvision: several GB)
	test -x $(OPENCLIP_VENV)/bin/python || python3 -m venv $(OPENCLIP_VENV)
	$(OPENCLIP_VENV)/bin/python -m pip install -q --upgrade pip
	$(OPENCLIP_VENV)/bin/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(OPENCLIP_VENV)/bin/python -m pip install -q -e '.[test,openclip]'

test: ## run the whole test suite, offline (and the open_clip tests in their venv, if make install-openclip made it)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest -q
	if test -x $(OPENCLIP_VENV)/bin/python; then \
		HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(OPENCLIP_VENV)/bin/python -m pytest -q -m openclip; fi

bench: ## indexing throughput and query latency benchmarks (writes bench/results/*.json)
	HF_HUB_OFFLINE=1 $(PY) bench/index_throughput.py
	HF_HUB_OFFLINE=1 $(PY) bench/query_latency.py

serve: ## start the search API on 127.0.0.1:8000
	$(VENV)/bin/imgsearch serve

ui: ## start the web UI on 127.0.0.1:8501
	$(VENV)/bin/imgsearch ui

lint: ## ruff: the rules in pyproject.toml, and the code formatted as ruff format leaves it
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

mutants: ## mutation testing of the core logic with mutmut (see docs/mutation-testing.md; not part of CI)
	$(PIP) install -q 'mutmut==3.8.1'
	rm -rf mutants
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TEST_TINY_MODEL_DIR=$(CURDIR)/mutants-model \
		$(VENV)/bin/mutmut run --max-children 2 > mutants.log 2>&1 || { tail -n 30 mutants.log; exit 1; }
	tail -n 3 mutants.log
	$(VENV)/bin/mutmut export-cicd-stats >/dev/null
	$(PY) tests/support/mutation_score.py
	$(VENV)/bin/mutmut results
