# Two commands do all set-up on a fresh machine:  `make demo`  and  `make test`.
# Both create .venv when missing and install what they need (no ROS installation required:
# ROS 2 Kilted's rclpy and messages come from PyPI).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
DICNET := $(VENV)/bin/dicnet

.PHONY: demo test lint venv venv-full sim-data train-sim bench int8-model clean help

help:
	@echo "make demo   - set up .venv (runtime + ROS 2 from PyPI) and run the node on the default model"
	@echo "make test   - set up .venv (everything incl. PyTorch) and run ruff + the whole test suite"
	@echo "make lint   - ruff only"
	@echo "make bench  - CPU latency benchmark of the shipped model (ONNX Runtime vs the two-pass PyTorch reference)"
	@echo "make sim-data train-sim - render the simulated benchmark and retrain the shipped model's recipe (CPU: ~2 h)"
	@echo "make int8-model - re-export models/dicnet_sim_default_int8.onnx from the shipped checkpoint, parity measured"

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel

# Runtime + ROS 2 + simulator + bag tools: all the demo needs (no PyTorch).
$(VENV)/.runtime: $(PY) setup.py
	$(PIP) install -q -e '.[ros,sim,bag]'
	touch $@

# Everything: training (PyTorch 2.14.1), export, tests, lint.
$(VENV)/.full: $(VENV)/.runtime
	$(PIP) install -q -e '.[ros,train,sim,bag,dev]'
	touch $@

# The real TensorRT Python bindings (no GPU libraries: test/tensorrt_api_check.py stubs those) of each supported
# major version, for the API conformance test; both are named tensorrt_bindings, so one folder each.
TRT_BINDINGS := 10.13.0.35 11.4.0.106
TRT_BINDINGS_STAMP := $(VENV)/.trt-bindings-$(subst $(eval) ,_,$(TRT_BINDINGS))
$(TRT_BINDINGS_STAMP): $(PY)
	rm -rf $(VENV)/trt-bindings $(VENV)/.trt-bindings-*
	for v in $(TRT_BINDINGS); do \
		$(PIP) install -q --no-deps --target $(VENV)/trt-bindings/$$v tensorrt-cu12-bindings==$$v || exit 1; done
	touch $@

venv: $(VENV)/.runtime
venv-full: $(VENV)/.full

demo: $(VENV)/.runtime
	$(DICNET) demo --out demo_out

lint: $(VENV)/.full
	$(PY) -m ruff check .

# DICNET_REQUIRE_ALL_TESTS=1: a test skipped for a missing module fails the run (everything is installed here).
test: $(VENV)/.full $(TRT_BINDINGS_STAMP)
	$(PY) -m ruff check .
	DICNET_REQUIRE_ALL_TESTS=1 $(PY) -m pytest -q

bench: $(VENV)/.full
	$(DICNET) bench --checkpoint models/dicnet_sim_default.pt --dynamic --threads 2 --iterations 30 \
		--int8-model models/dicnet_sim_default_int8.onnx --json bench_cpu.json

# The shipped model's recipe (training/configs/sim.yaml, models/README.md), into runs/sim.
SIM_DATA ?= data/sim
sim-data: $(VENV)/.full
	$(DICNET) sim --out $(SIM_DATA) --splits train,val --counts 1600,150 --size 384x216 --seed 0 --outlier-proxies 0.5
	$(DICNET) sim --out $(SIM_DATA)_test --split test --count 500 --size 384x216 --seed 0

train-sim: $(VENV)/.full
	$(DICNET) train-teacher --config sim --override data.root=$(SIM_DATA) --out runs/sim/teacher
	$(DICNET) distill --config sim --override data.root=$(SIM_DATA) --teacher runs/sim/teacher/best.pt --out runs/sim/student
	$(DICNET) fit-outlier-head --checkpoint runs/sim/student/best.pt --config sim --override data.root=$(SIM_DATA) --out runs/sim/headed.pt
	$(DICNET) calibrate --checkpoint runs/sim/headed.pt --config sim --override data.root=$(SIM_DATA) --out runs/sim/dicnet_sim.pt
	$(DICNET) evaluate --checkpoint runs/sim/dicnet_sim.pt --override data.root=$(SIM_DATA)_test --out runs/sim/eval --minmax
	$(DICNET) export --checkpoint runs/sim/dicnet_sim.pt --out runs/sim/dicnet_sim.onnx --dynamic --check-parity 4

# The shipped INT8 model from the shipped checkpoint (models/README.md#int8): calibrated on 64 of the 1600 training
# images of the model's recipe, refused unless its integer kernels keep the float quality on 120 held-out test images
# (seed 606, rendered for this check only) natively and on 48 of them on the AVX2 path, emulated with
# `qemu-x86_64 -cpu Haswell` (Debian/Ubuntu: apt-get install qemu-user; INT8_EMULATE= skips it, and the model then
# warns on AVX2 CPUs). Renders once into INT8_DATA (~5 min), exports in ~10 min on 2 cores.
INT8_DATA ?= /tmp/dicnet_int8
INT8_EMULATE ?= x86-avx2
INT8_MODEL ?= models/dicnet_sim_default_int8.onnx
int8-model: $(VENV)/.full $(INT8_DATA)/train/sim_manifest_train.json $(INT8_DATA)/parity/sim_manifest_test.json
	$(DICNET) export --checkpoint models/dicnet_sim_default.pt --out $(INT8_MODEL) --dynamic --labels nearest \
		--int8 --calibration-data $(INT8_DATA)/train --calibration-split train --calibration-images 64 \
		--int8-parity-data $(INT8_DATA)/parity --int8-parity-images 120 \
		$(if $(INT8_EMULATE),--int8-emulate $(INT8_EMULATE) --int8-emulated-images 48)

$(INT8_DATA)/train/sim_manifest_train.json: | $(VENV)/.full
	$(DICNET) sim --out $(INT8_DATA)/train --split train --count 1600 --size 384x216 --seed 0 --outlier-proxies 0.5

$(INT8_DATA)/parity/sim_manifest_test.json: | $(VENV)/.full
	$(DICNET) sim --out $(INT8_DATA)/parity --split test --count 120 --size 384x216 --seed 606

clean:
	rm -rf $(VENV) demo_out .pytest_cache .ruff_cache build *.egg-info bench_cpu.json
