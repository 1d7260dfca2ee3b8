"""Regenerates the Python modules of our .proto files, or checks the committed ones are fresh.

    python -m ambient_fast.xds.proto.generate           # rewrite *_pb2.py, *_pb2.pyi, *_grpc.py
    python -m ambient_fast.xds.proto.generate --check   # exit 1 naming every stale module

Needs the `test` extra (grpcio-tools for protoc, mypy-protobuf for the stubs); grpclib ships
its own protoc plugin. The generated modules are committed so that building or installing
the package never needs protoc; `--check` (run by .ci/test) keeps them in step with the
.proto files. Generator versions are pinned in pyproject.toml because their output differs.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
# Imports inside the .proto files are spelled from here ("ambient_fast/xds/proto/core.proto")
# so that the generated modules import each other as ambient_fast.xds.proto.*.
IMPORT_ROOT = PROTO_DIR.parents[2]
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_grpc.py")
# protoc plugin executables: (protoc option, executable name, the package that installs it).
PLUGINS = (
    ("mypy", "protoc-gen-mypy", "mypy-protobuf"),
    ("grpclib_python", "protoc-gen-grpclib_python", "grpclib"),
)


def proto_files() -> list[Path]:
    return sorted(PROTO_DIR.glob("*.proto"))


def defines_service(proto: Path) -> bool:
    # grpclib's plugin writes a *_grpc.py for every input; only files with a service need one.
    return any(line.startswith("service ") for line in proto.read_text().splitlines())


def generated_files(directory: Path) -> set[str]:
    """Names of the generated modules in `directory` (not our hand-written ones)."""
    return {
        path.name
        for path in directory.iterdir()
        if path.is_file() and path.name.endswith(GENERATED_SUFFIXES)
    }


def _plugin_path(executable: str, package: str) -> str:
    # Prefer the interpreter's own scripts dir: a venv's plugin matches the pinned versions.
    candidate = Path(sysconfig.get_path("scripts")) / executable
    if candidate.is_file():
        return str(candidate)
    found = shutil.which(executable)
    if found is None:
        raise SystemExit(f"protoc plugin {executable} not found: pip install {package}")
    return found


def _protoc(outputs: list[str], protos: list[Path]) -> None:
    command = [sys.executable, "-m", "grpc_tools.protoc", f"-I{IMPORT_ROOT}"]
    for option, executable, package in PLUGINS:
        command.append(f"--plugin=protoc-gen-{option}={_plugin_path(executable, package)}")
    command += outputs + [str(path.relative_to(IMPORT_ROOT)) for path in protos]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"protoc failed ({result.returncode}):\n{result.stderr}")


def run_protoc(out_root: Path) -> None:
    """Writes the generated modules under out_root/ambient_fast/xds/proto/."""
    (out_root / PROTO_DIR.relative_to(IMPORT_ROOT)).mkdir(parents=True, exist_ok=True)
    protos = proto_files()
    _protoc([f"--python_out={out_root}", f"--mypy_out={out_root}"], protos)
    _protoc([f"--grpclib_python_out={out_root}"], [p for p in protos if defines_service(p)])


def stale_modules() -> list[str]:
    """Generated modules that differ from, are missing from, or are extra to a fresh run."""
    with tempfile.TemporaryDirectory(prefix="xds-proto-") as tmp:
        fresh_dir = Path(tmp) / PROTO_DIR.relative_to(IMPORT_ROOT)
        run_protoc(Path(tmp))
        fresh = generated_files(fresh_dir)
        committed = generated_files(PROTO_DIR)
        problems = [f"{name}: missing" for name in sorted(fresh - committed)]
        problems += [f"{name}: no .proto generates it" for name in sorted(committed - fresh)]
        problems += [
            f"{name}: differs"
            for name in sorted(fresh & committed)
            if not filecmp.cmp(fresh_dir / name, PROTO_DIR / name, shallow=False)
        ]
        return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ambient_fast.xds.proto.generate")
    parser.add_argument(
        "--check", action="store_true", help="compare with a fresh run instead of writing"
    )
    args = parser.parse_args(argv)
    if args.check:
        problems = stale_modules()
        if problems:
            print(
                "generated protobuf modules in ambient_fast/xds/proto are stale:\n  "
                + "\n  ".join(problems)
                + "\nrun: python -m ambient_fast.xds.proto.generate",
                file=sys.stderr,
            )
            return 1
        print(f"generated protobuf modules are fresh ({len(proto_files())} .proto files)")
        return 0
    for name in generated_files(PROTO_DIR):
        (PROTO_DIR / name).unlink()
    run_protoc(IMPORT_ROOT)
    print(f"generated {len(generated_files(PROTO_DIR))} modules in {PROTO_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
