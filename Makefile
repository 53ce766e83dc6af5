# Two commands for a fresh machine: `make run` and `make test` (both create the venv and install first).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA ?= ../shared/data/aclImdb_train.tar.gz
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test lint train sweep bench gpu-check venv venv-serve clean

# Two stamps: `make run` installs only what serving needs (the base install: onnxruntime, FastAPI, no torch, no
# Ray); `make test` and the other targets install every extra on top.
venv-serve: $(VENV)/.installed-serve
$(VENV)/.installed-serve: pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e .
	touch $@

venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[train,dev,parquet,ray]'
	touch $@

run: venv-serve
	$(BIN)/sentiment-serve --host $(HOST) --port $(PORT)

lint: venv
	$(BIN)/ruff check training service tests
	$(BIN)/ruff format --check training service tests
	$(BIN)/mypy  # service/, configured in pyproject.toml [tool.mypy]

test: venv lint
	$(BIN)/pytest

# Retrain the shipped default end to end (about 1.5 hours on 2 CPU cores) and export it to exported/imdb-lstm:
# one epoch of language-model pretraining (training/pretrain.py: the embedding and LSTM learn to predict the next
# word of the training and unlabeled reviews), then 2 epochs on whole reviews + sentence crops from that start, then
# 2 fine-tuning epochs at half the rate with counterfactual negation and contrast examples (training/augment.py),
# then 2 self-training epochs (training/pseudo.py: the best model so far labels the 50k unlabeled reviews; the
# network reads 20k confident ones per epoch, the n-gram fit takes all of them with soft labels), both trained
# adversarially (training/adversarial.py: each batch also on its embeddings pushed along the loss gradient, Miyato
# et al. 2016) and residually (training/residual.py: the loss is on the network's log-odds plus half the n-gram
# branch's out-of-fold log-odds, so the network learns what the branch misses). In every stage the short texts
# drawn (crops, counterfactuals) lose their final "." / "!" / "?" (--end-drop 1), so the sentiment word, not the
# full stop, carries a short text's verdict. The n-gram branch (NBSVM) and the mix are refitted after every epoch;
# the best epoch is kept, and its mix (which is also the calibration) is refitted on validation reviews plus one
# sentence crop of each (--mix-on-crops), so short texts are calibrated too.
# This is the recipe of runs/drop100 -> 2.4.0 (0.9300 on validation at its epoch 6); rerun, it gave the same epochs
# (training losses equal to the last digit through epoch 5, to 6 digits at epoch 6), the same 0.9300 and the same
# probe results (README, "Later tries"). Interrupted? Run it again: each step resumes or skips what is done.
# `training.evaluate` adds the baseline, probe, faithfulness and speed sections to MODEL_CARD.md; then the int8 twin
# (training/quantize.py) is written to exported/imdb-lstm-int8 and checked side by side.
RUN ?= runs/lstm
train: venv
	$(BIN)/python -m training.pretrain --run $(RUN) --data $(DATA) --epochs 1
	$(BIN)/sentiment-train --data $(DATA) --out-dir $(RUN) --name imdb-lstm --no-bidirectional --hidden-size 192 \
		--ngram-buckets 1048573 --ngram-c 0.3 --epochs 2 --augment 0 --resume --init-from $(RUN)/lm.pt --end-drop 1
	$(BIN)/sentiment-train --out-dir $(RUN) --resume --epochs 4 --augment 6000 --lr 0.001 --end-drop 1
	$(BIN)/sentiment-train --out-dir $(RUN) --resume --epochs 6 --patience 3 --augment 6000 --lr 0.0005 --self-training \
		--adversarial-eps 2 --ngram-offset 0.5 --end-drop 1
	$(BIN)/sentiment-train --out-dir $(RUN) --resume --epochs 6 --mix-on-crops
	$(BIN)/sentiment-export --run $(RUN) --out exported/imdb-lstm --name imdb-lstm --version 2.4.0
	$(BIN)/python -m training.evaluate --model-dir exported/imdb-lstm --run $(RUN)
	$(BIN)/python -m training.quantize --model-dir exported/imdb-lstm --out exported/imdb-lstm-int8 --force \
		--evaluate --data $(DATA) --report benchmarks/quantize_results.json

# Fixed-budget RNN/LSTM/GRU comparison for MODEL_CARD.md (needs the LSTM run's prepared data).
sweep: venv
	$(BIN)/python -m training.sweep --prepared $(RUN)/prepared.pt --out runs/sweep --examples 5000 --epochs 3

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache

# Speed figures as ratios measured in one run: writes benchmarks/results.json and the README table. Needs wrk
# (`make bench-tools`). BENCH_SECONDS=3 BENCH_TEXTS=300 for a quick look.
bench: venv
	$(BIN)/python -m benchmarks.bench
	$(BIN)/python -m benchmarks.cli_bench

# The HTTP load generator `make bench` drives (Debian's wrk); the lock timeout waits out another apt run.
.PHONY: bench-tools
bench-tools:
	command -v wrk >/dev/null || apt-get -o DPkg::Lock::Timeout=300 install -y wrk

# Debian's chromium for the page tests (tests/service/test_page.py, which fail without it rather than install it
# themselves); refreshes the package lists only when the first try fails; the lock timeout waits out another apt run.
.PHONY: browser
browser:
	test -x /usr/bin/chromium || DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -q chromium \
		|| { DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 update -q \
		     && DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -q chromium; }

# 1,000,000 short rows through `sentiment-score`, RSS sampled at ~20% and ~90% (into benchmarks/cli_results.json).
.PHONY: bench-memory
bench-memory: venv
	$(BIN)/python -m benchmarks.cli_bench --memory

# CUDA execution provider + parity checks (run on a machine with a GPU; installs onnxruntime-gpu in its own venv).
gpu-check:
	bash benchmarks/gpu_check.sh

# Build the image, run it with podman-compose (api + batch profile) and check it end to end; sets podman up with
# ../shared/tools/container-env.sh when missing. SENTIMENT_TEST_ARTIFACT=DIR builds with that artifact instead.
.PHONY: test-container
test-container:
	bash tests/container/run.sh

# Load test: 64 clients for 30 s (short/long texts, some diagnostics and batch requests) against a sentiment-serve it
# starts on loopback; prints the JSON report and writes benchmarks/load_results.json (figures in RELIABILITY.md).
# LOAD_MODEL_DIR=DIR make load runs it against another artifact (or folder of them) than exported/.
LOAD_MODEL_DIR ?= exported
.PHONY: load
load: venv
	$(BIN)/python -m benchmarks.load --clients 64 --duration 30 --warmup 5 --model-dir $(LOAD_MODEL_DIR) \
		--out benchmarks/load_results.json
