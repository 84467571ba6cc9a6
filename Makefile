PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup data test demo soak bench bench-compression bench-large-models bench-learning bench-chain bench-consensus bench-p2p bench-swarm bench-flower bench-liveness bench-attacks bench-stall fuzz lint clean

# setup: the venv with everything installed, and Fashion-MNIST on this machine (Debian's
# dataset-fashion-mnist, installed when this user may install packages; otherwise it says what to do)
setup: $(STAMP) data

data:
	@bash scripts/get_dataset.sh

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -qq --upgrade pip setuptools wheel
	$(PY) -m pip install -qq -e '.[dev]'
	@touch $(STAMP)

# test: everything but the runs marked long (about 15-17 minutes on 2 cores)
test: setup
	$(PY) -m pytest -q --durations=15 -m "not long"

# soak: the long system tests (60 rounds of churn, an 80-round soak, the two worked examples: about 17 minutes), then 4 daemons on
# the tiny task for 200 rounds (about 15 minutes); figures in bench-results/soak.json
soak: setup
	$(PY) -m pytest -q --durations=5 -m long
	@mkdir -p bench-results
	$(PY) scripts/soak.py --rounds 200 --out bench-results/soak.json

demo: setup
	$(PY) scripts/local_swarm.py --nodes 4 --rounds 20 --genesis genesis/devnet-4.toml

# Benchmarks print their figures and write JSON under bench-results/ (not tracked). Long: ~1 hour.
bench: bench-learning bench-chain bench-consensus bench-p2p bench-swarm bench-flower bench-liveness bench-attacks bench-stall bench-compression bench-large-models

# compressed updates: the seed experiment in process for 60 rounds per setting (about 15 CPU-minutes each)
bench-compression: setup
	@mkdir -p bench-results
	$(PY) scripts/bench_compression.py --out bench-results/compression.json

# the swarm's per-round overhead with 4.8 MB (federated-net) and 44.7 MB (resnet) updates, 4 daemons
bench-large-models: setup
	@mkdir -p bench-results
	$(PY) scripts/bench_large_models.py --out bench-results/large-models.json

bench-learning: setup
	$(PY) scripts/reproduce_seed.py --preset dominant --out-dir bench-results/dominant
	$(PY) scripts/reproduce_seed.py --preset single-class --out-dir bench-results/single-class

bench-chain: setup
	@mkdir -p bench-results
	$(PY) scripts/bench_chain.py --out bench-results/chain.json

bench-consensus: setup
	@mkdir -p bench-results
	$(PY) scripts/bench_consensus.py --out bench-results/consensus.json

bench-p2p: setup
	@mkdir -p bench-results
	$(PY) scripts/bench_p2p.py --out bench-results/p2p.json

bench-swarm: setup
	@mkdir -p bench-results
	$(PY) scripts/bench_swarm.py --genesis genesis/seed-10.toml --rounds 6 --out bench-results/swarm-seed10.json

# the same workload (seed-10's task with FedAvg, 10 participants) through Flower's deployment and simulation
# modes and swarmnode's daemons (about 20 minutes here; the first run also installs Flower into
# .venv-flower, about 10 more)
bench-flower: setup
	@mkdir -p bench-results
	$(PY) scripts/bench_vs_flower.py --rounds 5 --out bench-results/flower.json

# the attack table: 16 attacks x 6 rules x f = 1, 2, 3 of 10, 30 rounds each, in process (about an hour)
bench-attacks: setup
	@mkdir -p bench-results
	$(PY) scripts/bench_attacks.py --out bench-results/attacks.json

# how long one hostile RPC client can stall the node's RPC and its chain (about 4 minutes)
bench-stall: setup
	@mkdir -p bench-results
	$(PY) scripts/bench_stall.py --out bench-results/stall.json

# long fuzzing of every decoder of peer and RPC bytes (FUZZ_SECONDS per target; crashes kept in runs/)
FUZZ_SECONDS ?= 600
fuzz: setup
	$(PY) scripts/fuzz.py --seconds $(FUZZ_SECONDS) --json runs/fuzz.json --crash-dir runs/fuzz-crashes

# round time with 1 of 4 daemons killed and 1 of 4 cut off (network namespaces: root), and a healed host
bench-liveness: setup
	@mkdir -p bench-results
	$(PY) scripts/bench_liveness.py --out bench-results/liveness.json

lint: setup
	$(VENV)/bin/ruff check swarmnode consensus scripts tests
	$(VENV)/bin/mypy swarmnode/learning swarmnode/aggregation

clean:
	rm -rf $(VENV) .venv-flower .pytest_cache build *.egg-info
