# make test | make demo | make bench: each creates .venv and installs the package first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Reinstall only when the package metadata changes.
STAMP := $(VENV)/.installed-stamp
# Tests run on CPU with 8 fake devices so sharding code sees a real mesh.
TEST_XLA_FLAGS ?= --xla_force_host_platform_device_count=8
PYTEST_ARGS ?= -q -n 2 --durations=15
TESTS ?= tests

.PHONY: venv test demo bench

venv: $(STAMP)

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -e '.[teacher,test]'
	touch $@

# Two pytest workers on two cores: one BLAS thread each, or torch oversubscribes.
# pytest exits 5 when it collects no tests; that is not a failure here.
test: $(STAMP)
	OMP_NUM_THREADS=1 XLA_FLAGS='$(TEST_XLA_FLAGS)' $(PY) -m pytest $(PYTEST_ARGS) $(TESTS); \
	  rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; rc=0; fi; exit $$rc

# The main job on the CPU default: distilled records from procedural scenes, then training the
# tiny student on them (re-running resumes / skips what is done), a dual-view evaluation, and one
# forward pass on a new scene.
demo: $(STAMP)
	$(PY) launch/gen_data.py --config=configs/datagen_tiny.py --config.out_dir=out/datagen_tiny
	$(PY) launch/train.py --config=configs/tiny.py --workdir=out/train_tiny
	$(PY) launch/eval.py --config=configs/eval_tiny.py --config.eval.benchmark=out/datagen_tiny \
	  --config.eval.max_items=16 --config.eval.coverage_layer=1 --checkpoint=out/train_tiny --out=out/eval_tiny
	$(PY) launch/demo.py --config=configs/tiny.py --workdir=out/train_tiny

# Every script in bench/, then one markdown table of side-by-side ratios in out/bench/report.md.
bench: $(STAMP)
	$(PY) bench/report.py --out=out/bench
