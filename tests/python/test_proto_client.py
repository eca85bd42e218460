"""A Python client generated from proto/paramdb.proto with grpcio-tools, against a running
shard: health checking, server reflection, create/push/pull/pull-range, and bad input.

Run by the Rust test `python::python_client_from_the_proto` as
`python test_proto_client.py ADDRESS PROTO_DIR`; exits non-zero with a message on failure.
"""

import struct
import sys
import tempfile
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_tools import protoc


def generate(proto_dir: str, out: str) -> None:
    rc = protoc.main([
        "grpc_tools.protoc",
        f"-I{proto_dir}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"{proto_dir}/paramdb.proto",
    ])
    if rc != 0:
        raise SystemExit(f"protoc failed with {rc}")
    sys.path.insert(0, out)


def f32s(values):
    return struct.pack(f"<{len(values)}f", *values)


def floats(b: bytes):
    return list(struct.unpack(f"<{len(b) // 4}f", b))


def check_reflection(channel) -> None:
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    db = ProtoReflectionDescriptorDatabase(channel)
    services = db.get_services()
    assert "paramdb.v1.Paramdb" in services, services
    assert "grpc.health.v1.Health" in services, services
    desc = db.FindFileContainingSymbol("paramdb.v1.Paramdb")
    assert desc.package == "paramdb.v1", desc.package


def main() -> None:
    address, proto_dir = sys.argv[1], sys.argv[2]
    out = tempfile.mkdtemp(prefix="paramdb-py-")
    generate(proto_dir, out)
    import paramdb_pb2 as pb
    import paramdb_pb2_grpc as pbg

    channel = grpc.insecure_channel(address)
    health = health_pb2_grpc.HealthStub(channel)
    deadline = time.time() + 30
    while True:
        try:
            status = health.Check(health_pb2.HealthCheckRequest(service="paramdb.v1.Paramdb")).status
        except grpc.RpcError:
            status = None
        if status == health_pb2.HealthCheckResponse.SERVING:
            break
        if time.time() > deadline:
            raise SystemExit(f"shard never became SERVING (last status {status})")
        time.sleep(0.05)

    check_reflection(channel)

    stub = pbg.ParamdbStub(channel)
    stub.CreateTable(pb.CreateTableRequest(spec=pb.TableSpec(name="py", dim=3, rule="sgd(0.5)")))
    info = stub.DescribeTable(pb.DescribeTableRequest(name="py"))
    assert info.spec.dim == 3 and info.spec.rule == "sgd(0.5)", info

    ack = stub.Push(pb.PushRequest(table="py", client_id=77, seq=1, keys=[10, 11],
                                   values=f32s([2.0, 4.0, 6.0, -2.0, 0.0, 8.0])))
    assert not ack.duplicate
    again = stub.Push(pb.PushRequest(table="py", client_id=77, seq=1, keys=[10, 11],
                                     values=f32s([2.0, 4.0, 6.0, -2.0, 0.0, 8.0])))
    assert again.duplicate, "a retry with the same (client, seq) is a duplicate"
    got = stub.Pull(pb.PullRequest(table="py", keys=[11, 10, 12]))
    assert got.dim == 3
    # sgd(0.5): w = -0.5 g, applied once.
    assert floats(got.values) == [1.0, -0.0, -4.0, -1.0, -2.0, -3.0, 0.0, 0.0, 0.0], floats(got.values)

    stub.PushRange(pb.PushRangeRequest(table="py", client_id=77, seq=2, start=100,
                                       values=f32s([2.0] * 6)))
    keys = []
    for block in stub.PullRange(pb.PullRangeRequest(table="py", start=0, end=1000)):
        keys.extend(block.keys)
    assert keys == [10, 11, 100, 101], keys

    for name, call, code in [
        ("wrong dim", lambda: stub.Push(pb.PushRequest(table="py", keys=[1], values=f32s([1.0]))),
         grpc.StatusCode.INVALID_ARGUMENT),
        ("unknown table", lambda: stub.Pull(pb.PullRequest(table="nope", keys=[1])),
         grpc.StatusCode.NOT_FOUND),
        ("NaN", lambda: stub.Push(pb.PushRequest(table="py", keys=[1], values=f32s([1.0, float("nan"), 0.0]))),
         grpc.StatusCode.INVALID_ARGUMENT),
    ]:
        try:
            call()
        except grpc.RpcError as e:
            assert e.code() == code, f"{name}: {e.code()} {e.details()}"
        else:
            raise SystemExit(f"{name}: accepted")
    stats = stub.Stats(pb.StatsRequest())
    assert stats.pushes == 2 and stats.duplicate_pushes == 1, stats
    print("python client: ok")


if __name__ == "__main__":
    main()
