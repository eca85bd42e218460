"""Generates paramdb/paramdb_pb2.py and paramdb_pb2_grpc.py from the repository's proto/ with
grpcio-tools while the package builds, so the stubs always match the server's proto."""

import os

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_DIR = os.path.normpath(os.path.join(HERE, "..", "..", "proto"))


class BuildWithStubs(build_py):
    def run(self):
        from grpc_tools import protoc

        out = os.path.join(HERE, "paramdb")
        proto = os.path.join(PROTO_DIR, "paramdb.proto")
        if not os.path.exists(proto):
            raise SystemExit(f"{proto} not found: install from a checkout of the repository")
        rc = protoc.main(
            ["grpc_tools.protoc", f"-I{PROTO_DIR}", f"--python_out={out}", f"--grpc_python_out={out}", proto]
        )
        if rc != 0:
            raise SystemExit(f"grpc_tools.protoc failed with {rc}")
        # The generated service module imports `paramdb_pb2` as a top-level module.
        grpc_mod = os.path.join(out, "paramdb_pb2_grpc.py")
        with open(grpc_mod) as f:
            text = f.read()
        text = text.replace("import paramdb_pb2 as paramdb__pb2", "from . import paramdb_pb2 as paramdb__pb2")
        with open(grpc_mod, "w") as f:
            f.write(text)
        super().run()


setup(cmdclass={"build_py": BuildWithStubs})
