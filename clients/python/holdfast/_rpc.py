"""The gRPC methods the client calls, typed, and checked against the generated descriptors at
import time (a renamed method or changed message type fails here, not on a user's first call).

The generated ``*_pb2_grpc`` stubs are untyped; the client builds its callables from this table
with ``channel.unary_unary`` and friends instead, so ``mypy --strict`` sees every request and
response type.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, Type, TypeVar

from google.protobuf.message import Message

from holdfast.v1 import (
    cluster_pb2,
    elections_pb2,
    locks_pb2,
    sessions_pb2,
    watch_pb2,
)

Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp", bound=Message)


@dataclass(frozen=True)
class Method(Generic[Req, Resp]):
    """One RPC: its path, request and response types, and whether each side streams."""

    path: str
    request: Type[Req]
    response: Type[Resp]


def _method(
    module: object,
    service: str,
    name: str,
    request: Type[Req],
    response: Type[Resp],
    *,
    client_streaming: bool = False,
    server_streaming: bool = False,
) -> Method[Req, Resp]:
    descriptor = getattr(module, "DESCRIPTOR").services_by_name[service].methods_by_name[name]
    if (
        descriptor.input_type.full_name != request.DESCRIPTOR.full_name
        or descriptor.output_type.full_name != response.DESCRIPTOR.full_name
        or descriptor.client_streaming != client_streaming
        or descriptor.server_streaming != server_streaming
    ):
        raise ImportError(f"holdfast: the generated {service}.{name} does not match the client")
    return Method(f"/{descriptor.containing_service.full_name}/{name}", request, response)


OPEN = _method(
    sessions_pb2,
    "Sessions",
    "Open",
    sessions_pb2.OpenSessionRequest,
    sessions_pb2.OpenSessionResponse,
)
KEEP_ALIVE = _method(
    sessions_pb2,
    "Sessions",
    "KeepAlive",
    sessions_pb2.KeepAliveRequest,
    sessions_pb2.KeepAliveResponse,
    client_streaming=True,
    server_streaming=True,
)
CLOSE = _method(
    sessions_pb2,
    "Sessions",
    "Close",
    sessions_pb2.CloseSessionRequest,
    sessions_pb2.CloseSessionResponse,
)
ACQUIRE = _method(
    locks_pb2, "Locks", "Acquire", locks_pb2.AcquireRequest, locks_pb2.AcquireResponse
)
RELEASE = _method(
    locks_pb2, "Locks", "Release", locks_pb2.ReleaseRequest, locks_pb2.ReleaseResponse
)
CHECK_TOKEN = _method(
    locks_pb2,
    "Locks",
    "CheckToken",
    locks_pb2.CheckTokenRequest,
    locks_pb2.CheckTokenResponse,
)
DESCRIBE = _method(
    locks_pb2, "Locks", "Describe", locks_pb2.DescribeRequest, locks_pb2.DescribeResponse
)
LIST = _method(locks_pb2, "Locks", "List", locks_pb2.ListRequest, locks_pb2.ListResponse)
CAMPAIGN = _method(
    elections_pb2,
    "Elections",
    "Campaign",
    elections_pb2.CampaignRequest,
    elections_pb2.CampaignResponse,
)
PROCLAIM = _method(
    elections_pb2,
    "Elections",
    "Proclaim",
    elections_pb2.ProclaimRequest,
    elections_pb2.ProclaimResponse,
)
LEADER = _method(
    elections_pb2,
    "Elections",
    "Leader",
    elections_pb2.LeaderRequest,
    elections_pb2.LeaderResponse,
)
RESIGN = _method(
    elections_pb2,
    "Elections",
    "Resign",
    elections_pb2.ResignRequest,
    elections_pb2.ResignResponse,
)
OBSERVE = _method(
    elections_pb2,
    "Elections",
    "Observe",
    elections_pb2.ObserveRequest,
    elections_pb2.ObserveResponse,
    server_streaming=True,
)
WATCH = _method(
    watch_pb2,
    "Watch",
    "Watch",
    watch_pb2.WatchRequest,
    watch_pb2.WatchResponse,
    server_streaming=True,
)
STATUS = _method(
    cluster_pb2, "Cluster", "Status", cluster_pb2.StatusRequest, cluster_pb2.StatusResponse
)
