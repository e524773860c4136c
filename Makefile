# Two commands do all set-up: `make all` (the experiments) and `make test` (the test suite).
# Both create .venv on first use and reinstall only when pyproject.toml changes.

PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CORES  ?= $(shell nproc 2>/dev/null || echo 2)
CONFIG ?= config/config.yaml
SNAKEMAKE_ARGS ?=

.PHONY: all test lint bench clean-results venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e . 2>&1 \
		| grep -v "is ignored: it is neither a file nor a directory" || true
	$(BIN)/python -c "import dstcore, torch, snakemake, papermill"
	@touch $(STAMP)

all: $(STAMP)
	$(BIN)/snakemake all --cores $(CORES) --configfile $(CONFIG) $(SNAKEMAKE_ARGS)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/pytest -x -q --durations=12

# Generated bad input (tests/test_fuzz.py) with a larger budget than make test's 500 per kind.
FUZZ_EXAMPLES ?= 5000
.PHONY: fuzz
fuzz: $(STAMP)
	DST_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/pytest -q tests/test_fuzz.py --hypothesis-show-statistics

# SIGKILL jobs of the smoke DAG at 20+ random moments, rerun, compare with a clean run (not in CI).
KILLS ?= 20
.PHONY: chaos
chaos: $(STAMP)
	$(BIN)/python -m tests.chaos --kills $(KILLS)

# profiles/slurm against a real one-node SLURM started on this machine (needs root; prints
# "SKIP: <reason>" and succeeds when it cannot run). See tests/cluster/README.md.
.PHONY: test-slurm
test-slurm: $(STAMP)
	bash tests/cluster/slurm_local.sh

# The rendered report laid out in headless Chromium (installed on demand): table widths, the
# verdict block's place, figures loaded, and a PNG of the first screen beside the report.
.PHONY: check-report
check-report: $(STAMP)
	$(BIN)/dst check-report results/report/report.html --screenshot results/report/first_screen.png

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/snakemake --lint

# Timings are a benchmark, not a test: the synthetic sweep (results/bench/) and the per-model
# latency tables of the pipeline (results/latency/; trains the models first if needed).
bench: $(STAMP)
	$(BIN)/dst latency sweep --out results/bench
	$(BIN)/dst latency resnets --out results/bench
	$(BIN)/snakemake latency --cores $(CORES) --configfile $(CONFIG) $(SNAKEMAKE_ARGS)

# Training throughput (a benchmark, not a test): images/s, GFLOP/s and the time waiting for data
# per model and phase, one thread, at the pipeline's batch sizes (results/bench/train_cpu.csv).
.PHONY: bench-train bench-gpu
bench-train: $(STAMP)
	$(BIN)/dst bench-train --models lenet5 resnet20 --batch-sizes 64 128 --threads 1 \
		--out results/bench/train_cpu.csv
	$(BIN)/dst bench-train --models resnet20 --batch-sizes 64 --threads 1 --precision auto \
		--compile --out results/bench/train_cpu_compiled.csv

# The same on a CUDA GPU (docs/gpu.md): ResNet-20 and ResNet18 at 32x32, bf16, batch 128, with
# the data held on the GPU and then decoded and augmented in DataLoader workers.
bench-gpu: $(STAMP)
	$(BIN)/dst bench-train --models resnet20 resnet18 --input-shape 3 32 32 --batch-sizes 128 \
		--phases plain tl1 masked --device cuda --precision bf16 --no-deterministic --threads 0 \
		--steps 50 --data resident --out results/bench/train_gpu_resident.csv
	$(BIN)/dst bench-train --models resnet20 resnet18 --input-shape 3 32 32 --batch-sizes 128 \
		--phases plain --device cuda --precision bf16 --no-deterministic --threads 0 \
		--steps 50 --data loader --workers 12 --out results/bench/train_gpu_loader.csv

clean-results:
	rm -rf results/* .snakemake/incomplete
