# rpkirepo: everything installs from here (Python packages into .venv, Debian peers when root).
#   make demo    set up, then publish the embedded sample repository and show what was written
#   make test    set up (with the real peers: rsync, rpki-client, ...), then run the whole suite
#   make check   ruff (lint + format), mypy --strict, pytest with warnings as errors
#   make bench   benchmarks; figures go to bench-out/ and docs/performance.md explains them

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Real peers the tests talk to (Debian packages).
DEB_PEERS := rsync rpki-client fort-validator octorpki nginx-light openssl ca-certificates curl wrk \
             faketime procps util-linux

.PHONY: all venv peers demo test check lint typecheck bench clean

all: check

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# Debian peers: installed with apt-get when running as root and something is missing.
peers:
	@missing=""; for p in $(DEB_PEERS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -z "$$missing" ]; then echo "peers: all installed"; \
	elif [ "$$(id -u)" = 0 ]; then \
	  echo "peers: installing$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	else echo "peers: missing$$missing (run make as root to install them; peer tests will skip)"; fi

demo: venv
	@$(BIN)/python -m rpkirepo.demo

test: venv peers
	$(BIN)/pytest -q

lint: venv
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: venv
	$(BIN)/mypy src

check: lint typecheck
	$(BIN)/pytest -q -W error

bench: venv peers
	@mkdir -p bench-out
	$(BIN)/python benchmarks/run_all.py --out bench-out

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache .hypothesis demo-out bench-out
