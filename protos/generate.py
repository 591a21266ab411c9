"""Generate the Python protobuf/gRPC modules in casfs/_proto from protos/.

Usage (from anywhere)::

    python protos/generate.py

writes ``casfs/_proto/*_pb2.py``, ``*_pb2.pyi`` and ``*_pb2_grpc.py`` under the
repository root. ``tests/test_proto_current.py`` calls :func:`generate` with a
temporary directory and checks that the committed files are up to date.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import pathlib
import sys

from grpc_tools import protoc  # type: ignore[import-untyped]

PROTO_ROOT = pathlib.Path(__file__).resolve().parent
REPO_ROOT = PROTO_ROOT.parent
PROTO_PACKAGE_DIR = PROTO_ROOT / "casfs" / "_proto"


def proto_files() -> list[pathlib.Path]:
    """All .proto sources (tvix's under tvix/), sorted so protoc sees them in a stable order."""
    return sorted(PROTO_PACKAGE_DIR.rglob("*.proto"))


def generate(out_dir: pathlib.Path) -> None:
    """Run protoc on every file under protos/casfs/_proto, writing into *out_dir*.

    Output paths mirror the proto paths, so modules land in
    ``out_dir/casfs/_proto``. Raises ``RuntimeError`` if protoc fails.
    """
    sources = proto_files()
    if not sources:
        raise RuntimeError(f"no .proto files found under {PROTO_PACKAGE_DIR}")
    out_dir.mkdir(parents=True, exist_ok=True)
    for source in sources:
        package = out_dir / source.parent.relative_to(PROTO_ROOT)
        package.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        # Bundled well-known types (google/protobuf/*.proto) shipped with grpc_tools.
        wkt_include = stack.enter_context(
            importlib.resources.as_file(importlib.resources.files("grpc_tools") / "_proto")
        )
        args = [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"-I{wkt_include}",
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            *(str(path) for path in sources),
        ]
        status = protoc.main(args)
    if status != 0:
        raise RuntimeError(f"protoc exited with status {status}: {' '.join(args)}")


def main() -> int:
    generate(REPO_ROOT)
    for path in proto_files():
        print(f"generated {path.relative_to(PROTO_ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
