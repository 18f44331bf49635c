# Two commands set up everything on a fresh Debian machine (system packages need root):
#   make demo   a live conversation with the embedded local agent
#   make test   lint, type-check and the whole test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
APT_PACKAGES := portaudio19-dev pulseaudio pulseaudio-utils libasound2-plugins sox iproute2 util-linux espeak-ng iptables redis-server
# LiveKit Agents pins its own livekit release: the offline agent runs from an environment of its own
AGENT_VENV ?= .venv-agent

.PHONY: setup system-packages agent-env demo test lint pytest bench clean

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

agent-env: $(AGENT_VENV)/.installed

$(AGENT_VENV)/.installed: $(VENV)/.installed speko_sync/testing/_worker_process.py
	$(PY) -m speko_sync.testing agent-env $(AGENT_VENV)
	touch $@

demo: setup agent-env
	$(PY) -m speko_sync demo

lint: setup
	$(PY) -m ruff check speko_sync tests benchmarks examples
	$(PY) -m mypy speko_sync

pytest: setup agent-env
	SPEKO_SYNC_AGENT_PYTHON=$(CURDIR)/$(AGENT_VENV)/bin/python $(PY) -m pytest

test: lint pytest

bench: setup agent-env
	$(PY) benchmarks/bench_server.py
	$(PY) benchmarks/bench_conversation.py
	$(PY) benchmarks/bench_scale.py
	$(PY) benchmarks/bench_realtime.py
	SPEKO_SYNC_AGENT_PYTHON=$(CURDIR)/$(AGENT_VENV)/bin/python $(PY) benchmarks/bench_agent_worker.py

clean:
	rm -rf $(VENV) $(AGENT_VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
