# Two commands set up everything on a fresh Debian machine (system packages need root):
#   make demo   a live conversation with the embedded local agent
#   make test   lint, type-check and the whole test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
APT_PACKAGES := portaudio19-dev pulseaudio pulseaudio-utils libasound2-plugins sox iproute2 util-linux

.PHONY: setup system-packages demo test lint pytest bench clean

setup: system-packages $(VENV)/.installed

system-packages:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing system packages: $$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "missing system packages (run as root or install them): $$missing" >&2; exit 1; \
	  fi; \
	fi

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

demo: setup
	$(PY) -m speko_sync demo

lint: setup
	$(PY) -m ruff check speko_sync tests benchmarks examples
	$(PY) -m mypy speko_sync

pytest: setup
	$(PY) -m pytest

test: lint pytest

bench: setup
	$(PY) benchmarks/bench_server.py
	$(PY) benchmarks/bench_conversation.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
