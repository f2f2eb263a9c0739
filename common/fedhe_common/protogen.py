"""Generate the gRPC Python code in ``fedhe_common/_proto`` from ``protos/``.

``python -m fedhe_common.protogen`` regenerates; ``--check`` regenerates into a
temporary folder and fails if the committed code differs (run by the tests).
"""

from __future__ import annotations

import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

import click

PACKAGE_ROOT = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_ROOT.parents[1]
PROTO_ROOT = REPO_ROOT / "protos"
OUT_DIR = PACKAGE_ROOT / "_proto"
IMPORT_PREFIX = "fedhe_common._proto."


def proto_files() -> list[Path]:
    """All .proto files under ``protos/``, sorted."""
    return sorted(PROTO_ROOT.rglob("*.proto"))


def generate(out_dir: Path) -> list[Path]:
    """Run protoc (grpcio-tools) into ``out_dir``; return the files written."""
    from grpc_tools import protoc  # dev dependency, only needed to regenerate

    out_dir.mkdir(parents=True, exist_ok=True)
    files = [str(p.relative_to(PROTO_ROOT)) for p in proto_files()]
    include = str(Path(protoc.__file__).parent / "_proto")
    plugins = Path(sys.executable).parent  # mypy-protobuf's protoc plugins (dev dependency)
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--plugin=protoc-gen-mypy={plugins / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={plugins / 'protoc-gen-mypy_grpc'}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out={out_dir}",  # typed stubs (.pyi) for messages ...
        f"--mypy_grpc_out={out_dir}",  # ... and for the service stubs
        *files,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    written = []
    for path in sorted([*out_dir.rglob("*_pb2*.py"), *out_dir.rglob("*_pb2*.pyi")]):
        text = path.read_text()
        # Generated imports name the proto package; make them absolute in ours.
        text = text.replace("from fedhe.", f"from {IMPORT_PREFIX}fedhe.")
        if path.suffix == ".pyi":  # stubs also name the package in annotations
            text = text.replace("import fedhe.", f"import {IMPORT_PREFIX}fedhe.")
        path.write_text(text)
        written.append(path)
    for folder in {p.parent for p in written} | {out_dir}:
        current = folder
        while current != out_dir.parent:
            init = current / "__init__.py"
            if not init.exists():
                init.write_text("")
            current = current.parent
    return written


def differences(expected: Path, actual: Path) -> list[str]:
    """Relative paths of generated files that differ between two trees."""
    diffs = []
    generated = [*expected.rglob("*.py"), *expected.rglob("*.pyi")]
    committed = [*actual.rglob("*.py"), *actual.rglob("*.pyi")]
    names = {p.relative_to(expected) for p in generated}
    names |= {p.relative_to(actual) for p in committed if "__pycache__" not in p.parts}
    for rel in sorted(names):
        a, b = expected / rel, actual / rel
        if not (a.exists() and b.exists() and filecmp.cmp(a, b, shallow=False)):
            diffs.append(str(rel))
    return diffs


@click.command()
@click.option("--check", is_flag=True, help="fail if the committed code is out of date")
def main(check: bool) -> None:
    """Regenerate (or check) the protobuf/gRPC code."""
    if not check:
        shutil.rmtree(OUT_DIR, ignore_errors=True)
        for path in generate(OUT_DIR):
            click.echo(f"wrote {path.relative_to(REPO_ROOT)}")
        return
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        diffs = differences(Path(tmp), OUT_DIR)
    if diffs:
        click.echo("generated code is out of date (run `make proto`): " + ", ".join(diffs))
        sys.exit(1)
    click.echo("generated code matches protos/")


if __name__ == "__main__":
    main()
