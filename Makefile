# Weight Decay, Reproduced: the two commands of the README.
#   make book   execute every chapter (papermill, SCALE=smoke, SEED=0) and build the HTML book into _build/html
#               (SEED=1 rebuilds on a disjoint set of run seeds: a check that each verdict holds)
#   make test   lint (ruff, import-linter layer contracts), unit tests of wdlib, then the book, then a
#               headless-Chromium check of the built HTML
# And on a GPU machine:
#   make gpu-check  the prepared GPU check (python -m wdlib.check --device cuda --size full; under 8 minutes on
#               one H100/H200): optimizer parity (Muon vs torch.optim.Muon too) and bf16 remedies, GPT in bf16 autocast, Hutchinson vs a
#               PyHessian loop, AdamW bandwidth, packed vs solo training, chapter 1 end to end. Writes
#               _build/gpu-check/report.{json,md}, prints the Markdown, fails if a section fails. It uses the
#               Python that has torch there (CHECK_PY: .venv's if present, else $(PYTHON)) and sets up nothing.
#               A GPU machine without a network: run `sh tools/gpu_wheels.sh` on one with a network (fills the
#               git-ignored .whl/ with mnist1d, requests and its dependencies, setuptools), carry .whl along,
#               and there `pip install --no-index --no-deps .whl/*.whl`, then optionally
#               `pip install --no-index --find-links .whl --no-deps -e .` (the check also runs uninstalled).
# Both set up .venv by themselves on a fresh machine. torch is installed first, pinned, so that the
# project's `torch>=2.4` is already satisfied and pip never pulls a multi-GB CUDA build.
# TORCH_INDEX=<url> takes it from that index (the workflow uses https://download.pytorch.org/whl/cpu).

PYTHON      ?= python3
VENV        ?= .venv
TORCH_SPEC  ?= torch==2.13.0
TORCH_INDEX ?=
SCALE       ?= smoke
DEVICE      ?= auto
SEED        ?= 0
PY          := $(VENV)/bin/python
STAMP       := $(VENV)/.wdlib-installed
CHECK_PY    ?= $(if $(wildcard $(PY)),$(PY),$(PYTHON))

WHEELHOUSE  := $(VENV)/wheelhouse

.PHONY: book test lint unit rehearsal browser-deps setup clean gpu-check

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url "$(TORCH_INDEX)")
	$(PY) -m pip install --quiet -e ".[book,test]"
	@touch $(STAMP)

book: $(STAMP)
	$(PY) tools/build_book.py --scale $(SCALE) --device $(DEVICE) --seed $(SEED)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

unit: $(STAMP)
	$(PY) -m pytest -m "not book and not rehearsal" -q

# The wheels a fresh Colab-like environment needs (wdlib[notebooks]'s dependencies and the torch this venv has),
# downloaded once from the package registry, so that the rehearsal itself installs offline.
$(WHEELHOUSE)/.complete: $(STAMP)
	$(PY) -c "import torch; print('torch==' + torch.__version__.split('+')[0])" > $(VENV)/torch-pin.txt
	$(PY) -m pip download --quiet --disable-pip-version-check -d $(WHEELHOUSE) -c $(VENV)/torch-pin.txt \
		".[notebooks]" "setuptools>=77"
	rm -f $(WHEELHOUSE)/wdlib-*
	@touch $@

# The readers' paths, rehearsed offline: a wheel of wdlib built here and installed (the core alone) into a fresh
# venv that has only torch, then the Colab install cell run there (as on Colab), and chapter 1 at the test scale.
rehearsal: $(STAMP) $(WHEELHOUSE)/.complete
	WDLIB_WHEELHOUSE=$(abspath $(WHEELHOUSE)) $(PY) -m pytest -m rehearsal -q

browser-deps:
	@sh tools/ensure_chromium.sh

test: lint unit rehearsal book browser-deps
	$(PY) -m pytest -m book -q

gpu-check:
	$(CHECK_PY) -m wdlib.check --device cuda --size full --out _build/gpu-check

clean:
	rm -rf _build
