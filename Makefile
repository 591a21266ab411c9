# casfs — the two commands a fresh machine needs are `make run` and `make test`.
# Both create .venv, install Debian's FUSE packages when missing, and install casfs into .venv.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
MNT ?= $(HOME)/cas
SYSTEM_PACKAGES := fuse3 libfuse3-dev pkg-config openssl attr

.PHONY: run serve test lint typecheck proto system-deps clean

# Debian packages pyfuse3 builds against and fusermount3 comes from.
system-deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" -eq 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

$(STAMP): pyproject.toml | system-deps
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -q -e '.[fuse,test,dev]'
	touch $(STAMP)

# Mount the embedded on-disk CAS at $(MNT) (Ctrl-C unmounts).
run: $(STAMP)
	mkdir -p $(MNT)
	$(VENV)/bin/casfs mount $(MNT)

# The embedded CAS server alone, on 127.0.0.1:8980.
serve: $(STAMP)
	$(VENV)/bin/casfs serve --listen 127.0.0.1:8980

test: lint typecheck
	$(PY) -m pytest -q -ra

lint: $(STAMP)
	$(VENV)/bin/ruff check casfs tests protos

typecheck: $(STAMP)
	$(VENV)/bin/mypy

# Regenerate casfs/_proto from protos/ (the result is committed).
proto: $(STAMP)
	$(PY) protos/generate.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
