"""The committed generated code is exactly what grpcio-tools generates from proto/ today."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GENERATED = REPO / "proto" / "vllm_audit" / "v1"


def test_committed_code_matches_protoc(tmp_path: Path) -> None:
    protos = sorted(str(p.relative_to(REPO / "proto")) for p in GENERATED.glob("*.proto"))
    assert protos, "no .proto files found"
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-I", str(REPO / "proto"),
         f"--python_out={tmp_path}", f"--pyi_out={tmp_path}", f"--grpc_python_out={tmp_path}",
         *protos],
        check=True, cwd=REPO,
    )
    fresh = sorted((tmp_path / "vllm_audit" / "v1").glob("*_pb2*.py*"))
    assert fresh
    committed = sorted(GENERATED.glob("*_pb2*.py*"))
    assert [p.name for p in fresh] == [p.name for p in committed]
    for new in fresh:
        old = GENERATED / new.name
        assert new.read_text() == old.read_text(), (
            f"{old} is stale: run `make proto` and commit the result"
        )
