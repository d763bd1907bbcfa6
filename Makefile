# make test | make demo | make bench: each creates .venv and installs the package first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Reinstall only when the package metadata changes.
STAMP := $(VENV)/.installed-stamp
# Tests run on CPU with 8 fake devices so sharding code sees a real mesh.
TEST_XLA_FLAGS ?= --xla_force_host_platform_device_count=8
# loadgroup: tests that share one expensive fixture run (marked xdist_group) stay on one worker.
PYTEST_ARGS ?= -q -n 2 --dist loadgroup --durations=15
TESTS ?= tests
# libtpu (the [tpu] extra, for launch/compile.py) is installed beside the CPU backend: tests and
# the demo stay on the CPU platform so it does not look for a TPU at start.
CPU_ONLY := JAX_PLATFORMS=$${JAX_PLATFORMS:-cpu}

.PHONY: venv test demo bench

venv: $(STAMP)

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -e '.[teacher,test,tpu,tfds]'
	touch $@

# Two pytest workers on two cores: one BLAS thread each, or torch oversubscribes.
# pytest exits 5 when it collects no tests; that is not a failure here.
test: $(STAMP)
	$(CPU_ONLY) OMP_NUM_THREADS=1 XLA_FLAGS='$(TEST_XLA_FLAGS)' $(PY) -m pytest $(PYTEST_ARGS) $(TESTS); \
	  rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; rc=0; fi; exit $$rc

# The main job on the CPU default (configs/demo.py, about 7 minutes on 2 cores): scenes and their
# distilled records, a held-out dual-view benchmark, the tiny student trained with and without the
# red box, both views evaluated before and after, one report in out/demo/demo.md. Re-running resumes.
demo: $(STAMP)
	$(CPU_ONLY) $(PY) launch/demo.py

# Every script in bench/, then one markdown table of side-by-side ratios in out/bench/report.md.
# On a GPU machine JAX picks the GPU; elsewhere the CPU platform, so libtpu does not look for a TPU.
BENCH_ENV := $(if $(shell command -v nvidia-smi 2>/dev/null),,$(CPU_ONLY))
bench: $(STAMP)
	$(BENCH_ENV) $(PY) -m bench.report --out=out/bench
