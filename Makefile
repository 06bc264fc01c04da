# Two entry points (see README Quickstart): `make demo` and `make test`.
# Both create .venv on first use and install everything into it.
#
# Install order matters (see docs/ecosystem_notes.md, section 1):
#  1. torch 2.14.1 + torchvision 0.29.1 pinned together (the CPU-only torch wheel on
#     these machines cannot import torchvision);
#  2. basicsr 1.4.2 with --no-build-isolation --no-deps, so building it does not pull a
#     second torch into a temporary build environment, nor opencv-python beside the
#     headless one;
#  3. the remaining dependencies from requirements.txt;
#  4. the package itself, editable, --no-deps (everything it declares is now present).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.textualdeg-installed
PYTEST_ARGS ?=

.PHONY: demo test install clean-demo

install: $(STAMP)

$(STAMP): pyproject.toml requirements.txt Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade "pip>=24" "setuptools>=64" wheel cython
	$(PIP) install torch==2.14.1 torchvision==0.29.1
	$(PIP) install --no-build-isolation --no-deps basicsr==1.4.2
	$(PIP) install -r requirements.txt
	$(PIP) install --no-build-isolation --no-deps -e .
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -n 2 $(PYTEST_ARGS)

demo: $(STAMP)
	$(PY) -m textualdeg.demo --output demo_output

clean-demo:
	rm -rf demo_output
