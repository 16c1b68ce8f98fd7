"""The generated protobuf messages (`pb`) and gRPC stubs (`rpc`) of `protos/cascade/v1/`.

Generated on first import (or when a .proto is newer than its stubs) by `serving.codegen`.
"""

from __future__ import annotations

from serving import codegen

if codegen.stale():
    codegen.generate()

from serving._gen import cascade_pb2 as pb  # noqa: E402
from serving._gen import cascade_pb2_grpc as rpc  # noqa: E402

__all__ = ["pb", "rpc"]
