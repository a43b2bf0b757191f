# duet: every install step lives here. `make run` and `make test` are all a new machine needs.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
MODEL_DIR := models/ling-tiny
MODEL_STAMP := $(MODEL_DIR)/model.safetensors
MLX_STAMP := .venv-mlx/.installed
PYTEST_ARGS ?=

.PHONY: setup model proto gen-proto run test lint bench bench-gpu mlx-venv clean help

help:
	@echo "make run        set up and run duet on the CPU with the tiny model"
	@echo "make test       set up and run the whole test suite"
	@echo "make setup      create $(VENV) and install duet (editable) with pinned dependencies"
	@echo "make model      build the tiny default model into $(MODEL_DIR)"
	@echo "make bench      CPU benchmarks (tables, appended to bench/RESULTS.md)"
	@echo "make bench-gpu  GPU kernel benchmarks (on a GPU machine)"
	@echo "make lint       ruff"

$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "setuptools>=68" wheel
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $@

# gRPC code generated from proto/duet/v1/*.proto into duet/v1/ (ignored by git): the proto
# package duet.v1 becomes the Python package duet.v1 inside duet.
PROTOS := $(wildcard proto/duet/v1/*.proto)
PROTO_STAMP := duet/v1/.generated

$(PROTO_STAMP): $(PROTOS) $(STAMP)
	$(MAKE) --no-print-directory gen-proto
	@touch $@

proto: $(PROTO_STAMP)

# The generation alone, with any Python that has grpcio-tools: the images run
# `make gen-proto PY=python` with the environment they built (no .venv of their own).
gen-proto:
	$(PY) -m grpc_tools.protoc -Iproto --python_out=. --grpc_python_out=. --pyi_out=. $(PROTOS)
	@touch duet/v1/__init__.py

$(MODEL_STAMP): $(STAMP)
	$(VENV)/bin/duet build-tiny-model --out $(MODEL_DIR)

setup: $(STAMP) $(PROTO_STAMP) $(MODEL_STAMP)

model: $(STAMP)
	$(VENV)/bin/duet build-tiny-model --out $(MODEL_DIR)

$(MLX_STAMP): scripts/setup_mlx_venv.sh
	bash scripts/setup_mlx_venv.sh

mlx-venv: $(MLX_STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

run: setup
	$(VENV)/bin/duet up --model $(MODEL_DIR)

test: setup mlx-venv lint
	$(VENV)/bin/pytest -q --durations=15 $(PYTEST_ARGS)

bench: setup
	$(PY) -m bench.cpu_engine
	$(PY) -m bench.transfer_tcp
	$(PY) -m bench.gateway_cost
	$(PY) -m bench.prefix_cache
	$(PY) -m bench.tp_cpu

bench-gpu: setup
	$(PY) -m bench.gpu_kernels
	$(PY) -m bench.gpu_transfer

clean:
	rm -rf $(VENV) .venv-mlx $(MODEL_DIR) .pytest_cache .ruff_cache duet/v1
