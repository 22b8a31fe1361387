# ghum-pipe: `make demo` and `make test` do all set-up on a fresh machine.
# GPU users: make TORCH_SPEC="torch==2.5.1" (any build their pip can find), then `pip install .[gpu]`.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.ghum-pipe-installed
DEMO ?= demo
# Tests and benchmarks use this many workers/threads unless told otherwise.
export OMP_NUM_THREADS ?= 2

.PHONY: install demo test test-fast bench train-demo model-e2e clean sysdeps blender-check

install: $(STAMP)

# open3d needs the system library libusb-1.0-0; the report's browser test needs chromium.
sysdeps:
	@if ! ldconfig -p 2>/dev/null | grep -q libusb-1.0.so.0; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing libusb-1.0-0 (needed by open3d)"; \
	    (apt-get install -y -qq libusb-1.0-0 >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq libusb-1.0-0 >/dev/null)); \
	  else \
	    echo "open3d needs libusb-1.0-0; run: sudo apt-get install -y libusb-1.0-0"; exit 1; \
	  fi; \
	fi
	@# headless Chromium screenshots the HTML report in tests/test_report.py (skipped without it)
	@if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing chromium (the report's browser test)"; \
	    (apt-get install -y -qq chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)); \
	  else \
	    echo "note: the report's browser test needs chromium: sudo apt-get install -y chromium"; \
	  fi; \
	fi

$(STAMP): pyproject.toml | sysdeps
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first, so the range in pyproject.toml is already satisfied (no CUDA download).
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[test,cluster]"
	touch $(STAMP)

demo: install
	# the template's own population: the README's numbers (people outside it: make model-e2e)
	$(PY) -m ghum_pipe.cli synth $(DEMO)/synth --count 2 --seed 0 --population template
	$(PY) -m ghum_pipe.cli run $(DEMO)/synth/scans --work $(DEMO)/work --workers 2
	@echo "Outputs: $(DEMO)/work/scans/<id>/ (landmarks.json, registration.ply, residuals.png), report: $(DEMO)/work/report/index.html"

test: install
	$(PY) -m pytest -q tests

test-fast: install
	$(PY) -m pytest -q -m "not slow" tests

bench: install
	$(PY) bench/landmarks.py
	$(PY) bench/register.py
	$(PY) bench/scaling.py
	$(PY) bench/model.py
	$(PY) bench/texture.py
	$(PY) bench/review.py

# Avatars opened in Blender's own glTF importer (bpy, ~370 MB, not in `make test`'s install) and
# checked by the Khronos glTF-Validator (npm package, needs node: apt-get install nodejs npm).
GLTF_VALIDATOR := $(VENV)/gltf-validator
blender-check: install
	$(PIP) install -q -e ".[test,cluster,blender]"
	@command -v npm >/dev/null || { echo "the glTF validator needs node and npm: sudo apt-get install -y nodejs npm"; exit 1; }
	test -d $(GLTF_VALIDATOR)/node_modules/gltf-validator || npm install --silent --prefix $(GLTF_VALIDATOR) gltf-validator@2.0.0-dev.3.10
	GHUM_PIPE_REQUIRE_BLENDER=1 $(PY) -m pytest -q -s tests/test_export_blender.py tests/test_export_validator.py

train-demo: install
	$(PY) -m ghum_pipe.cli synth $(DEMO)/regs --registrations --count 40 --seed 0 --population template
	$(PY) -m ghum_pipe.cli train --work $(DEMO)/regs --out $(DEMO)/model
	$(PY) -m ghum_pipe.cli evaluate --model $(DEMO)/model --work $(DEMO)/regs

# Scans -> run -> train -> evaluate against the truth, beside training from the true registrations,
# and the shape-space comparison on a large population. The defaults fit ~15 min on 2 cores.
MODEL_E2E_ARGS ?= --scan-subjects 6 --takes 2 --population 500
model-e2e: install
	$(PY) bench/model_e2e.py $(DEMO)/model-e2e $(MODEL_E2E_ARGS)

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache
