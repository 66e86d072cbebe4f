# DigitSum: `make run` serves the shipped model, `make test` checks everything.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 8000
HOST ?= 0.0.0.0
# Processes for `make run`: auto is one per CPU of the cgroup's quota (a container's --cpus), else of the affinity
# mask. Each has its own model and batcher, and decodes under its own GIL; /metrics adds them up through a
# temporary PROMETHEUS_MULTIPROC_DIR. Use 1 on a GPU, where one batcher should own the device. app/serve.py gives
# each its own socket, so connections spread evenly; benchmarks/results/serve.md has the numbers.
WORKERS ?= auto

.PHONY: run test lint lock container-test bench-container train train-mnist bench clean

# The service alone needs only the base dependencies; tests and training need the dev extra.
# The first install is the long one: torch 2.14.1 is PyPI's CUDA build (about 5.5 GB with its nvidia-* wheels,
# about 2 minutes here), the only Linux x86_64 build PyPI has; it runs on the CPU where there is no GPU.
$(BIN)/.serve: pyproject.toml
	@echo "Installing the service into $(VENV): torch 2.14.1 (CUDA build, ~5.5 GB, also used on CPU), FastAPI, Pillow..."
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -e .
	touch $@

$(BIN)/.dev: pyproject.toml $(BIN)/.serve
	@echo "Installing the test, lint and training tools into $(VENV)..."
	$(BIN)/python -m pip install -e '.[dev]'
	touch $@

run: $(BIN)/.serve  ## serve models/digitsum.pt on $(HOST):$(PORT)
	$(BIN)/python -m app.serve --host $(HOST) --port $(PORT) --workers $(WORKERS) --log-config app/log_config.json

test: $(BIN)/.dev  ## the whole suite
	@command -v chromium >/dev/null || { echo "make test: the browser tests need Debian's chromium: apt-get install chromium"; exit 1; }
	$(BIN)/python -m pytest

lint: $(BIN)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy app training benchmarks
	$(BIN)/hadolint Dockerfile
	docker-compose config -q

# The image's dependencies, every file pinned by hash, for linux x86_64 / CPython 3.11 (the image's platform),
# resolved against PyPI alone (this machine's pip config adds local wheel stores).
lock: $(BIN)/.dev  ## requirements.lock from pyproject.toml's base dependencies
	env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null $(BIN)/pip-compile --quiet --generate-hashes --allow-unsafe \
		--strip-extras --no-emit-index-url --no-emit-find-links --index-url https://pypi.org/simple \
		--output-file requirements.lock pyproject.toml

# Builds the image and checks it as a user meets it (docker run, then docker-compose); needs root: it installs
# docker.io when missing and starts dockerd, stopped again at the end.
container-test: $(BIN)/.dev  ## the image: build, run, check (tests/system/test_container.py)
	bash tests/support/container.sh $(BIN)/python -m pytest -m container tests/system/test_container.py

bench-container: $(BIN)/.dev  ## image size and build time, container vs make run (benchmarks/results/container.md)
	bash tests/support/container.sh $(BIN)/python benchmarks/container.py

train: $(BIN)/.dev  ## the shipped model: the sample split, default settings
	$(BIN)/python -m training --dataset sample

train-mnist: $(BIN)/.dev  ## full MNIST (downloads into data/ when missing)
	$(BIN)/python -m training --dataset mnist --epochs 10 --out runs/mnist/digitsum.pt

bench: $(BIN)/.dev
	$(BIN)/python benchmarks/train_time.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
