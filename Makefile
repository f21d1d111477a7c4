# hsrl: `make demo` and `make test` work on a fresh machine (they install what they need).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.hsrl-installed
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
# accelerate launch gives each process ONE intra-op thread unless told otherwise (its default): use every core.
CORES := $(shell nproc 2>/dev/null || echo 1)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# Everything runs offline: models and data come from installed packages, never a hub.
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup data browser test test-slow demo demo-images lint bench clean

setup: $(STAMP) data

# Re-installs only when pyproject.toml or the constraints change. pyproject.toml states ranges; this machine's exact
# torch/torchvision (on local disk: pip is capped there) come from the constraints file, so no other torch is fetched.
CONSTRAINTS := tools/machine-constraints.txt
EXTRAS := dev,train,serve,cpu
OPENVINO_STACK := tools/openvino-stack.txt
$(STAMP): pyproject.toml $(CONSTRAINTS) $(OPENVINO_STACK)
	@echo "==> installing hsrl[$(EXTRAS)] into $(VENV) (first time: several minutes, ~6 GB)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c $(CONSTRAINTS) -e '.[$(EXTRAS)]'
	$(PY) -m pip install --quiet -c $(CONSTRAINTS) -r $(OPENVINO_STACK)
	@touch $@

data:
	@if [ -f $(FASHION_MNIST) ]; then \
		echo "==> Fashion-MNIST present ($(dir $(FASHION_MNIST)))"; \
	else \
		echo "==> installing Debian's dataset-fashion-mnist"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist; \
	fi
	@echo "==> the Austen corpus ships inside the package (hsrl/data/corpora/austen.jsonl.gz)"

# The search page's test drives a real headless browser: Debian's chromium and its driver (Selenium comes with the
# dev extra). HSRL_REQUIRE_BROWSER makes that test fail, not skip, when they are missing.
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then \
		echo "==> chromium and chromedriver present"; \
	else \
		echo "==> installing Debian's chromium and chromium-driver (the browser test)"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium chromium-driver; \
	fi

# Two workers: many tests spend their time waiting for a launched process (accelerate, a server) to start.
# --dist loadgroup (tests/conftest.py): a module with its own module-scoped fixture (one recipe run, one server)
# stays on one worker; every other test is handed out on its own, which balances the two workers.
test: setup browser
	@echo "==> pytest (fast suite; slow tests: make test-slow)"
	HSRL_REQUIRE_BROWSER=1 $(PY) -m pytest -n 2 --dist loadgroup

# Long runs live here, outside CI (e.g. the MiniLM gradient-caching recipe comparison; exit 5, no tests, is not a failure).
test-slow: setup
	$(PY) -m pytest -m slow || [ $$? -eq 5 ]

# The main job on the embedded default: fine-tune the packaged all-MiniLM-L6-v2 on neighbouring
# sentences of the Austen novels (Persuasion held out), then print its evaluation against the
# untouched checkpoint. About 7 minutes on 2 CPU cores (at most 10 anywhere: the budget caps it). Training autocasts to bfloat16 where the CPU computes in it
# (avx512_bf16 or AMX: 1.7x the steps of float32 here), and stays in float32 elsewhere.
demo: setup
	@echo "==> demo: contrastive + uniformity fine-tuning of all-MiniLM-L6-v2 on the embedded Austen corpus (at most 100 steps or 6.75 minutes of training)"
	$(VENV)/bin/accelerate launch --num_processes 1 --num_machines 1 --dynamo_backend no \
		--mixed_precision $$($(PY) -c "from hsrl.backends import cpu_has_bf16; print('bf16' if cpu_has_bf16() else 'no')") \
		--num_cpu_threads_per_process $(CORES) \
		recipes/bookcorpus.py --dataset austen --model minilm --loss "contrastive:1,tau=0.05 + uniform:0.19,t=2" \
		--batch-size 96 --lr 1e-4 --max-seq-length 48 --time-budget-min 6.75 --max-steps 100 --checkpoint-every 50 \
		--replay-dataset wordnet --replay-sentences 32 --replay-weight 4 \
		--eval-dataset factbook --output-dir runs/demo
	@echo "==> model (sentence-transformers folder) and metrics in runs/demo; TensorBoard logs in runs/demo/logs"

demo-images: setup
	$(VENV)/bin/accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
		recipes/quickstart.py --output-dir runs/quickstart --max-steps 300

lint: setup
	$(VENV)/bin/ruff check .

bench: setup
	$(PY) benchmarks/losses.py

clean:
	rm -rf runs .pytest_cache .ruff_cache .hypothesis
