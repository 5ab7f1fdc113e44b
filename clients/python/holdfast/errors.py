"""The exceptions the client raises, and the one table that turns gRPC statuses into them.

Every documented failure has its own class; all derive from :class:`HoldfastError`, which
carries the gRPC status code and the server's message. No ``grpc.RpcError`` escapes the client
for a documented case.
"""

from __future__ import annotations

import re
from typing import Any, Optional, Union

import grpc

from holdfast.v1 import locks_pb2

#: Trailing-metadata key of the leader's client address on UNAVAILABLE answers.
LEADER_ADDR_KEY = "holdfast-leader-addr"
#: Trailing-metadata key of the oldest revision a watch can still replay (OUT_OF_RANGE answers).
COMPACTED_REVISION_KEY = "holdfast-compacted-revision"
#: Trailing-metadata key of the gRPC rich error model's ``google.rpc.Status``.
STATUS_DETAILS_KEY = "grpc-status-details-bin"
#: Type URL of :class:`holdfast.v1.locks_pb2.PolicyDenial` in a status's details.
POLICY_DENIAL_TYPE_URL = "type.googleapis.com/holdfast.v1.PolicyDenial"


class HoldfastError(Exception):
    """A call failed. ``code`` is the gRPC status code (None for client-side failures)."""

    def __init__(self, message: str, code: Optional[grpc.StatusCode] = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class Unavailable(HoldfastError):
    """No node answered within the retry budget (nodes down, no leader, no quorum)."""


class InvalidArgument(HoldfastError, ValueError):
    """The request was malformed. ``field`` names the offending request field."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message, grpc.StatusCode.INVALID_ARGUMENT)
        self.field = field


class Unauthenticated(HoldfastError):
    """The cluster requires a token (``Client(token=...)``) and none, or a wrong one, was sent."""


class PermissionDenied(HoldfastError):
    """The caller's role or principal may not do this."""


class PolicyDenied(PermissionDenied):
    """A policy's ``admit`` hook refused the request. ``reason`` is the policy's own words;
    ``policy``/``version`` name the deployed module and ``prefix`` the binding that decided."""

    def __init__(self, message: str, denial: locks_pb2.PolicyDenial) -> None:
        super().__init__(message, grpc.StatusCode.PERMISSION_DENIED)
        self.reason = denial.reason
        self.policy = denial.policy
        self.version = denial.version
        self.prefix = denial.prefix


class SessionLost(HoldfastError):
    """The session is gone: expired (it stopped renewing within its TTL), closed, or unknown.
    Every lock it held was released; fencing tokens it holds are stale."""


class LockTimeout(HoldfastError, TimeoutError):
    """The lock (or leadership) was not granted within the timeout."""

    def __init__(self, message: str, name: str) -> None:
        super().__init__(message, grpc.StatusCode.DEADLINE_EXCEEDED)
        self.name = name


class LockDelayed(LockTimeout):
    """Not granted because the lock is in lock-delay: a holder's session expired, and nobody is
    granted the lock until ``delayed_until_ms`` (cluster time; ``retry_after`` seconds after
    the answer). A :class:`LockTimeout` too: the wait (0 s for ``try_lock``) ran out."""

    def __init__(self, name: str, delayed_until_ms: int, now_ms: int) -> None:
        self.delayed_until_ms = delayed_until_ms
        self.retry_after = max(0, delayed_until_ms - now_ms) / 1000.0
        super().__init__(
            f"lock {name} is in lock-delay for {self.retry_after:.3f} s more "
            "(a holder's session expired)",
            name,
        )


class FailedPrecondition(HoldfastError):
    """The lock's state does not allow the request (e.g. it is held in the other mode)."""


class StaleToken(FailedPrecondition):
    """The fencing token (or leader key) is not a current hold of the lock."""


class LimitExceeded(HoldfastError):
    """A server limit was reached (RESOURCE_EXHAUSTED): too many sessions, holds, waiters…"""


class Compacted(HoldfastError):
    """A watch asked for revisions the node no longer keeps. Re-read the state
    (``client.describe``/``list``) and watch again from the revision it reports + 1;
    ``compacted_revision`` is the oldest revision still available."""

    def __init__(self, message: str, compacted_revision: int) -> None:
        super().__init__(message, grpc.StatusCode.OUT_OF_RANGE)
        self.compacted_revision = compacted_revision


# "name: must be 1..512 bytes" (request validation) or "wait_timeout_ms is invalid: ..." (the
# state machine's own check).
_FIELD = re.compile(r"^([A-Za-z_][A-Za-z0-9_.\[\]]*)(?::| is invalid:)")


def trailing(error: grpc.RpcError, key: str) -> Optional[Union[str, bytes]]:
    """The value of trailing-metadata ``key`` of a failed call, if present."""
    getter: Any = getattr(error, "trailing_metadata", None)
    try:
        # (key, value) pairs: namedtuples from grpc, tuples from grpc.aio's Metadata.
        metadata: Any = getter() if getter is not None else None
        for item in metadata or ():
            if item[0] == key and isinstance(item[1], (str, bytes)):
                value: Union[str, bytes] = item[1]
                return value
    except Exception:  # a call that never started has no metadata
        return None
    return None


def code_of(error: grpc.RpcError) -> grpc.StatusCode:
    getter = getattr(error, "code", None)
    code = getter() if getter is not None else None
    return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN


def details_of(error: grpc.RpcError) -> str:
    getter = getattr(error, "details", None)
    details = getter() if getter is not None else None
    return details if isinstance(details, str) else str(error)


def policy_denial(details: bytes) -> Optional[locks_pb2.PolicyDenial]:
    """The :class:`PolicyDenial` in a serialized ``google.rpc.Status`` (the status details),
    if any. Decoded by hand: ``google.rpc.Status`` is ``code=1 (varint), message=2 (string),
    details=3 (repeated Any{type_url=1, value=2})``, and the client depends on no
    googleapis package for it."""
    try:
        for field, value in _fields(details):
            if field != 3 or not isinstance(value, bytes):
                continue
            parts = dict(_fields(value))
            type_url, payload = parts.get(1), parts.get(2)
            if type_url == POLICY_DENIAL_TYPE_URL.encode() and isinstance(payload, bytes):
                return locks_pb2.PolicyDenial.FromString(payload)
    except (ValueError, IndexError):
        return None
    return None


def _fields(data: bytes) -> list[tuple[int, Union[int, bytes]]]:
    """The (field number, value) pairs of one protobuf message: varints as ints,
    length-delimited fields as bytes. Other wire types are refused (ValueError)."""
    fields: list[tuple[int, Union[int, bytes]]] = []
    at = 0
    while at < len(data):
        key, at = _varint(data, at)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, at = _varint(data, at)
            fields.append((number, value))
        elif wire_type == 2:
            length, at = _varint(data, at)
            if at + length > len(data):
                raise ValueError("truncated field")
            fields.append((number, data[at : at + length]))
            at += length
        else:
            raise ValueError(f"unexpected wire type {wire_type}")
    return fields


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def from_rpc_error(error: grpc.RpcError, *, session_call: bool = False) -> HoldfastError:
    """The exception for a failed call. ``session_call``: the call named a session, so
    NOT_FOUND means the session is gone."""
    code = code_of(error)
    message = details_of(error)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        match = _FIELD.match(message)
        return InvalidArgument(message, match.group(1) if match else "")
    if code == grpc.StatusCode.PERMISSION_DENIED:
        details = trailing(error, STATUS_DETAILS_KEY)
        denial = policy_denial(details) if isinstance(details, bytes) else None
        if denial is not None:
            return PolicyDenied(message, denial)
        return PermissionDenied(message, code)
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return Unauthenticated(message, code)
    if code == grpc.StatusCode.NOT_FOUND and (session_call or "session" in message):
        return SessionLost(message, code)
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        if "token" in message or "not held" in message or "leader" in message:
            return StaleToken(message, code)
        return FailedPrecondition(message, code)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return LimitExceeded(message, code)
    if code == grpc.StatusCode.OUT_OF_RANGE:
        oldest = trailing(error, COMPACTED_REVISION_KEY)
        if oldest is not None:
            text = oldest.decode() if isinstance(oldest, bytes) else oldest
            return Compacted(message, int(text) if text.isdigit() else 0)
    if code == grpc.StatusCode.UNAVAILABLE:
        return Unavailable(message, code)
    return HoldfastError(message, code)
