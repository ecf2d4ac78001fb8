# t2t-vit-lite: set-up and the entry points the README names.
# Needs only python3 and make: everything else is installed into $(VENV).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export PYTHONWARNINGS := ignore::DeprecationWarning

.PHONY: setup lint test test-latest constraints book readme sync-check nbtest pytest timm-suite train weights experiments glyph-atlas clean bench-gpu bench-gpu-train bench-gpu-infer
.DEFAULT_GOAL := test

# the virtual environment, created if missing and refreshed when the requirements change. It installs from
# constraints.txt: the exact versions `make test` last passed with, so a new machine gets the set that passed.
# `make test-latest` tests the newest versions the registry serves instead (see below).
PIP_CONSTRAINTS ?= -c constraints.txt
PIP_UPGRADE ?=
$(BIN)/.installed: settings.ini setup.py constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(PIP_UPGRADE) $(PIP_CONSTRAINTS) -e ".[dev]"
	@touch $@

setup: $(BIN)/.installed

# README.md is generated from nbs/index.ipynb (nbdev_readme needs Quarto, which cannot be installed here)
readme: setup
	$(BIN)/jupyter nbconvert --log-level=ERROR --to markdown --stdout --TagRemovePreprocessor.remove_cell_tags="['remove-cell', 'book-only']" nbs/index.ipynb \
	  | sed -E 's#\]\(([0-9][0-9][a-z]?_[A-Za-z0-9_]+\.ipynb)\)#](nbs/\1)#g' > README.md   # chapter links point into nbs/ from the repository root

# fail when nbdev_clean, nbdev_export or the README generation would change a tracked file
SYNCED := nbs t2t_vit_lite README.md
sync-check: setup
	@before=$$(git ls-files -z $(SYNCED) | xargs -0 md5sum); \
	$(BIN)/nbdev_clean && $(BIN)/nbdev_export && $(MAKE) --no-print-directory readme >/dev/null; \
	after=$$(git ls-files -z $(SYNCED) | xargs -0 md5sum); \
	if [ "$$before" != "$$after" ]; then \
	  echo "Notebooks, library and README were out of sync; these files changed:"; \
	  diff <(echo "$$before") <(echo "$$after") | grep '^>' | awk '{print "  " $$3}'; \
	  echo "Run: nbdev_clean && nbdev_export && make readme, then commit."; exit 1; fi; \
	echo "sync-check: notebooks, library and README are in sync"

# the notebook test: every chapter of the book runs once, top to bottom in a fresh kernel (two at a time, with
# nbdev's skip rules for `#| eval: false` and the tst_flags of settings.ini), and a cell that raises fails it.
# The executed chapters fill the book's execution cache, so `book` renders them without running them again.
NB_CACHE := _build/.jupyter_cache
# One torch thread per kernel: two kernels of two threads each on 2 cores made every chapter wait on the other's
# threads (all 21 chapters: 737 s in the last CI, 302 s with one thread each on an idle machine).
nbtest: setup
	rm -rf $(NB_CACHE)
	OMP_NUM_THREADS=1 $(BIN)/python tests/execute_chapters.py --workers 2 --cache $(NB_CACHE)

# _config.yml: a chapter that raises fails the build, with or without -W
book: nbtest
	$(BIN)/jupyter-book build -W --keep-going .

# two pytest workers (pytest-xdist): the training tests' processes run one thread each and wait on each other often,
# so two at a time halve the time on 2 cores (10.7 -> 5.6 minutes), with one torch thread each; every torchrun
# test has its own port
PYTEST_WORKERS ?= 2
pytest: setup
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest tests/ -q -m 'not slow' --ignore=tests/timm_suite --durations=15 -n $(PYTEST_WORKERS)

# timm's own tests/test_models.py (downloaded for the installed timm version, not committed) on all 13 variants:
# 130 tests (10 per variant, with the prune contract timm's own CI leaves out), about 5 minutes on 2 cores
# (one process: these tests keep both cores busy, and two pytest workers took twice as long)
timm-suite: setup
	PYTHON=$(BIN)/python tests/timm_suite/run.sh -k t2t_vit

# the code a reader sees within the width the book shows (100 characters), and code that parses (ruff.toml)
lint: setup
	$(BIN)/ruff check --output-format concise .

test: sync-check lint book pytest timm-suite

# the same tests against the newest releases the registry serves (a venv of its own, no constraints; this
# machine's pip configuration, which may cap torch, is ignored). After a green run, `make constraints
# VENV=.venv-latest` records that set as the one `make` installs.
test-latest:
	PIP_CONFIG_FILE=/dev/null $(MAKE) test VENV=.venv-latest PIP_CONSTRAINTS= PIP_UPGRADE="--upgrade --upgrade-strategy eager"

constraints: setup
	@{ echo "# The exact versions 'make test' last passed with (make installs with -c constraints.txt)."; \
	  echo "# Regenerate after a green run with: make constraints"; \
	  $(BIN)/python -m pip freeze --exclude-editable | grep -v '^#' | sort -f; } > constraints.txt

# the main job's demo: a small T2T-ViT on the embedded digits, on the CPU (a few minutes); again: continues or reports it done
train: setup
	$(BIN)/t2t-train --device cpu --output runs/demo --resume auto

# the GPU results table of chapter 12 (needs a CUDA GPU; about 15 minutes on an H100): every run is appended to $(GPU_JSON)
GPU_JSON ?= t2t_vit_lite/results/gpu.json
T2T_BENCH ?= $(BIN)/t2t-bench
GPU_MODELS := timm:deit_small_patch16_224 t2t_vit_t_14 t2t_vit_14 t2t_vit_7
GPU_RUN = $(T2T_BENCH) --device cuda --amp bf16 --repeats 5 --models $(GPU_MODELS) --save $(GPU_JSON)
bench-gpu-train:
	$(GPU_RUN) --train -b 256 --fit-batch --opt adamw
	$(GPU_RUN) --train -b 256 --fit-batch --opt fused
	$(GPU_RUN) --train -b 256 --fit-batch --opt fused --channels-last
	$(GPU_RUN) --train -b 256 --fit-batch --opt fused --compile
	$(GPU_RUN) --train -b 256 --fit-batch --opt fused --compile --channels-last
bench-gpu-infer:
	$(GPU_RUN) -b 256
	$(GPU_RUN) -b 256 --compile
	$(GPU_RUN) -b 1
	$(GPU_RUN) -b 1 --compile
	$(T2T_BENCH) --pipeline --save $(GPU_JSON)
bench-gpu: bench-gpu-train bench-gpu-infer

# the trained reference models shipped in t2t_vit_lite/weights/ (chapter 08), regenerated from scratch on the CPU:
# t2t and patch on the digits, glyphs_t2t and glyphs_patch on the glyphs (one thread each; `python -m
# t2t_vit_lite.reference KIND` remakes one kind)
weights: setup
	OMP_NUM_THREADS=1 nice -n 19 $(BIN)/python -m t2t_vit_lite.reference

# the glyph atlas of chapter 07 (t2t_vit_lite/assets/), rendered from Debian font packages; it names the missing ones
glyph-atlas: setup
	$(BIN)/python -c 'from t2t_vit_lite.glyphs import build_atlas; print(build_atlas())'

# chapter 10's paired ablation sweep on the CPU, two processes of one thread (resumable: finished runs are kept):
# t2t_vit_lite/results/ablations.{csv,json} and ablations_labels.json; `... --pilot` redoes the pilot
experiments: setup
	OMP_NUM_THREADS=1 $(BIN)/python -m t2t_vit_lite.experiments --jobs 2

clean:
	rm -rf _build _proc _docs
