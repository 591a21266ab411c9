# casfs — the two commands a fresh machine needs are `make run` and `make test`.
# Both create .venv, install Debian's FUSE packages when missing, and install casfs into .venv.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
MNT ?= $(HOME)/cas
# systemd: for systemd-analyze, which the tests run on the shipped units; strace: the tests
# kill a server inside one system call with it; man-db and zsh: the tests read the generated
# man page and completions with them.
SYSTEM_PACKAGES := fuse3 libfuse3-dev pkg-config openssl attr systemd strace man-db zsh
# make install: casfs in its own venv under PREFIX, on PATH, as /sbin/mount.casfs, and
# its systemd units (which run $(PREFIX)/bin/casfs).
PREFIX ?= /opt/casfs

.PHONY: run serve test lint typecheck proto system-deps bench bench-quick bench-deps clean install uninstall

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
	$(PY) -m pip install -q -e '.[test,dev]'
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
	$(VENV)/bin/ruff check casfs tests protos bench build_backend

typecheck: $(STAMP)
	$(VENV)/bin/mypy

# casfs beside buildbox-fuse, rclone mount, the direct client and a local file: one markdown
# table (bench/README.md). As root. `make bench ARGS="--runs 5"`; bench-quick fits in ~2 min.
# Then the tree scenario (issue 17): trees/ beside buildbox-fuse and a local copy.
bench: $(STAMP) bench-deps
	$(PY) -m bench $(ARGS)
	$(PY) -m bench.treemount $(TREE_ARGS)

bench-quick: $(STAMP) bench-deps
	$(PY) -m bench --quick $(ARGS)

# Debian's rclone for the benchmark (buildbox installs itself into .cache/peers when the
# benchmark starts). A failed install is not fatal: the table then reports the peer missing.
bench-deps:
	-@$(MAKE) --no-print-directory system-deps SYSTEM_PACKAGES=rclone

# Regenerate casfs/_proto from protos/ (the result is committed).
proto: $(STAMP)
	$(PY) protos/generate.py

# The man page and completions every wheel carries (generated from the parser at its build,
# build_backend/): make install puts them under /usr/local/share, where man, bash-completion
# and zsh look.
SHARE_FILES := man/man1/casfs.1 bash-completion/completions/casfs zsh/site-functions/_casfs

# As root: casfs into $(PREFIX), /usr/local/bin/casfs, /sbin/mount.casfs, the units into
# /etc/systemd/system and /etc/systemd/user, an example config into /etc/casfs, the man page
# and completions into /usr/local/share.
install: system-deps
	$(PYTHON) -m venv $(PREFIX)
	$(PREFIX)/bin/pip install -q -U pip
	$(PREFIX)/bin/pip install -q .
	install -m 644 README.md $(PREFIX)/README.md
	ln -sf $(PREFIX)/bin/casfs /usr/local/bin/casfs
	ln -sf $(PREFIX)/bin/mount.casfs /sbin/mount.casfs
	for file in $(SHARE_FILES); do \
	  install -D -m 644 $(PREFIX)/share/$$file /usr/local/share/$$file; done
	mkdir -p /etc/systemd/system /etc/systemd/user /etc/casfs
	for unit in casfs/systemd/*.service; do \
	  sed 's|/opt/casfs|$(PREFIX)|g' $$unit > /etc/systemd/system/$$(basename $$unit); done
	for unit in casfs/systemd/user/*.service; do \
	  sed 's|/opt/casfs|$(PREFIX)|g' $$unit > /etc/systemd/user/$$(basename $$unit); done
	install -m 644 casfs/systemd/config.example.toml /etc/casfs/config.example.toml
	if [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
	@echo "installed casfs in $(PREFIX); next: /etc/casfs/config.toml, then systemctl enable --now casfs@NAME"

uninstall:
	rm -f /usr/local/bin/casfs /sbin/mount.casfs /etc/casfs/config.example.toml
	for file in $(SHARE_FILES); do rm -f /usr/local/share/$$file; done
	for unit in casfs/systemd/*.service; do rm -f /etc/systemd/system/$$(basename $$unit); done
	for unit in casfs/systemd/user/*.service; do rm -f /etc/systemd/user/$$(basename $$unit); done
	rm -rf $(PREFIX)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
