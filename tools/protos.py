"""Generate the gateway's gRPC stubs from protos/, or check that the committed ones are current.

    python -m tools.protos           # regenerate gateway/generated/
    python -m tools.protos --check   # exit 1 when gateway/generated/ differs from protos/

protoc runs in a child process: inside a process that has imported TensorFlow it crashes
(two protobuf runtimes).
"""

from __future__ import annotations

import argparse
import filecmp
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
OUT = ROOT / "gateway" / "generated"
# Hand-written files that live beside the generated tree.
KEEP = {"__init__.py"}


def generate(out: Path) -> None:
    sources = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    cmd = [
        sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTOS}",
        f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}", *sources,
    ]
    subprocess.run(cmd, check=True, cwd=PROTOS)


def generated_files(root: Path) -> set[str]:
    return {
        str(p.relative_to(root)) for p in root.rglob("*")
        if p.is_file() and p.suffix in {".py", ".pyi"} and p.name not in KEEP
        and "__pycache__" not in p.parts
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args(argv)
    if not args.check:
        for name in generated_files(OUT):
            (OUT / name).unlink()
        generate(OUT)
        print(f"generated {len(generated_files(OUT))} files in {OUT.relative_to(ROOT)}/")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        generate(fresh)
        want, have = generated_files(fresh), generated_files(OUT)
        stale = sorted(want ^ have) + sorted(
            n for n in want & have if not filecmp.cmp(fresh / n, OUT / n, shallow=False)
        )
    if stale:
        print("generated stubs are stale; run `make protos`:", *stale, sep="\n  ", file=sys.stderr)
        return 1
    print(f"generated stubs are current ({len(want)} files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
