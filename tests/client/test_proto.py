"""The committed gRPC code is exactly what grpcio-tools generates from client/proto/device.proto."""

import shutil

import pytest

from tests.conftest import ROOT

GENERATED = ("device_pb2.py", "device_pb2.pyi", "device_pb2_grpc.py")


def test_generated_code_matches_the_proto(tmp_path):
    protoc = pytest.importorskip("grpc_tools.protoc", reason="pip install -e '.[test]'")
    (tmp_path / "client" / "proto").mkdir(parents=True)
    shutil.copy(ROOT / "client" / "proto" / "device.proto", tmp_path / "client" / "proto")
    out = str(tmp_path)
    code = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{tmp_path}",
            f"--python_out={out}",
            f"--pyi_out={out}",
            f"--grpc_python_out={out}",
            str(tmp_path / "client" / "proto" / "device.proto"),
        ]
    )
    assert code == 0
    for name in GENERATED:
        fresh = (tmp_path / "client" / "proto" / name).read_text()
        committed = (ROOT / "client" / "proto" / name).read_text()
        assert fresh == committed, (
            f"client/proto/{name} is stale: regenerate it (command in client/proto/device.proto)"
        )
