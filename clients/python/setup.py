"""Builds the `holdfast` package: generates `holdfast.v1` (protobuf messages with type stubs, and
gRPC stubs) from the repository's `proto/` directory at build time, so that the installed
stubs always match the server they were built beside.

The proto files are found at `../../proto` (this directory inside the Holdfast repository) or
at `$HOLDFAST_PROTO_DIR`.
"""

import os
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
PROTOS = ["common", "sessions", "locks", "elections", "watch", "cluster", "policies"]


def proto_dir() -> Path:
    configured = os.environ.get("HOLDFAST_PROTO_DIR")
    candidate = Path(configured) if configured else HERE.parent.parent / "proto"
    if not (candidate / "holdfast" / "v1" / "locks.proto").is_file():
        raise SystemExit(
            f"holdfast: no proto files at {candidate}: build from a Holdfast checkout "
            "(pip install ./clients/python) or set HOLDFAST_PROTO_DIR to its proto/ directory"
        )
    return candidate


class BuildWithStubs(build_py):
    """build_py that first writes the generated `holdfast/v1/*` modules into the build tree."""

    def run(self) -> None:
        from grpc_tools import protoc  # a build requirement (pyproject.toml)
        import grpc_tools

        source = proto_dir()
        out = Path(self.build_lib)
        (out / "holdfast" / "v1").mkdir(parents=True, exist_ok=True)
        include = Path(grpc_tools.__file__).parent / "_proto"
        args = [
            "grpc_tools.protoc",
            f"-I{source}",
            f"-I{include}",
            f"--python_out={out}",
            f"--pyi_out={out}",
            f"--grpc_python_out={out}",
        ] + [f"holdfast/v1/{name}.proto" for name in PROTOS]
        if protoc.main(args) != 0:
            raise SystemExit(f"holdfast: protoc failed on {source}")
        (out / "holdfast" / "v1" / "__init__.py").write_text(
            '"""Generated from proto/holdfast/v1 at build time. Do not edit."""\n'
        )
        super().run()


setup(cmdclass={"build_py": BuildWithStubs})
