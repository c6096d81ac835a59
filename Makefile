# Everything runs in .venv, made and filled here: nothing relies on what the machine has installed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	# torch first and pinned: 2.13.0 is the CPU build on local disk; anything looser pulls CUDA.
	$(PY) -m pip install --quiet --disable-pip-version-check torch==2.13.0
	# Every extra (README "Install"): torch, the TF reference stack, ONNX, and pytest.
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[torch,tf,onnx,test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m porting.demo

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	@for script in bench/*.py; do echo "== $$script"; $(PY) $$script || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
