"""The client's pure parts, without a cluster: status-detail decoding, the retry decisions,
the session deadline."""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import grpc
import pytest

import holdfast
from holdfast import _core, errors
from holdfast.v1 import locks_pb2, sessions_pb2


class FakeError(grpc.RpcError):
    def __init__(
        self, code: grpc.StatusCode, details: str, metadata: Sequence[Tuple[str, object]] = ()
    ) -> None:
        super().__init__(details)
        self._code, self._details, self._metadata = code, details, tuple(metadata)

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> Tuple[Tuple[str, object], ...]:  # type: ignore[override]
        return self._metadata


def varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def field(number: int, payload: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def rpc_status(code: int, message: str, details: Sequence[Tuple[str, bytes]]) -> bytes:
    """A google.rpc.Status, encoded by hand."""
    encoded = varint(1 << 3) + varint(code) + field(2, message.encode())
    for type_url, value in details:
        encoded += field(3, field(1, type_url.encode()) + field(2, value))
    return encoded


def test_a_policy_denial_is_decoded_from_the_status_details() -> None:
    denial = locks_pb2.PolicyDenial(
        reason="no tenant label", policy="quota", version=3, prefix="t/"
    )
    other = ("type.googleapis.com/google.rpc.DebugInfo", b"\x0a\x01x")
    details = rpc_status(
        7, "denied", [other, (errors.POLICY_DENIAL_TYPE_URL, denial.SerializeToString())]
    )
    error = errors.from_rpc_error(
        FakeError(
            grpc.StatusCode.PERMISSION_DENIED, "denied", [(errors.STATUS_DETAILS_KEY, details)]
        )
    )
    assert isinstance(error, holdfast.PolicyDenied)
    assert (error.reason, error.policy, error.version, error.prefix) == (
        "no tenant label",
        "quota",
        3,
        "t/",
    )
    # Without the detail (or with garbage) it is a plain PermissionDenied.
    for metadata in ([], [(errors.STATUS_DETAILS_KEY, b"\xff\xff")]):
        plain = errors.from_rpc_error(
            FakeError(grpc.StatusCode.PERMISSION_DENIED, "no role", metadata)
        )
        assert type(plain) is holdfast.PermissionDenied


@pytest.mark.parametrize(
    "code, message, expected, field_name",
    [
        (
            grpc.StatusCode.INVALID_ARGUMENT,
            "name: must be 1..512 bytes",
            holdfast.InvalidArgument,
            "name",
        ),
        (
            grpc.StatusCode.INVALID_ARGUMENT,
            "wait_timeout_ms is invalid: too long",
            holdfast.InvalidArgument,
            "wait_timeout_ms",
        ),
        (grpc.StatusCode.NOT_FOUND, "session 9 does not exist", holdfast.SessionLost, None),
        (
            grpc.StatusCode.FAILED_PRECONDITION,
            "token 4 is not a current hold",
            holdfast.StaleToken,
            None,
        ),
        (
            grpc.StatusCode.FAILED_PRECONDITION,
            "lock x is held in Shared mode",
            holdfast.FailedPrecondition,
            None,
        ),
        (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "limit reached: sessions",
            holdfast.LimitExceeded,
            None,
        ),
        (grpc.StatusCode.UNAUTHENTICATED, "no token", holdfast.Unauthenticated, None),
        (grpc.StatusCode.UNAVAILABLE, "no leader", holdfast.Unavailable, None),
    ],
)
def test_status_codes_become_their_exceptions(
    code: grpc.StatusCode, message: str, expected: type, field_name: Optional[str]
) -> None:
    error = errors.from_rpc_error(FakeError(code, message))
    assert type(error) is expected and error.code == code and error.message == message
    if field_name is not None:
        assert isinstance(error, holdfast.InvalidArgument) and error.field == field_name


def test_a_compacted_watch_names_the_oldest_revision() -> None:
    error = errors.from_rpc_error(
        FakeError(
            grpc.StatusCode.OUT_OF_RANGE, "compacted", [(errors.COMPACTED_REVISION_KEY, "42")]
        )
    )
    assert isinstance(error, holdfast.Compacted) and error.compacted_revision == 42


def test_retries_follow_the_leader_hint_once_then_rotate_with_bounded_pauses() -> None:
    endpoints = _core.Endpoints(["a:1", "b:1"])
    attempts = _core.Attempts(endpoints, write=True, budget=60.0)
    assert attempts.index() == 0
    hint = [(errors.LEADER_ADDR_KEY, "c:1")]
    # A leader the client did not know is added and tried at once.
    assert attempts.failed(FakeError(grpc.StatusCode.UNAVAILABLE, "not leader", hint)) == 0.0
    assert endpoints.addrs() == ["a:1", "b:1", "c:1"] and attempts.index() == 2
    # The hint is followed once per call; then every endpoint in turn, pausing after each round.
    pauses = [
        attempts.failed(FakeError(grpc.StatusCode.UNAVAILABLE, "down", hint)) for _ in range(9)
    ]
    assert pauses == [0.0, 0.0, 0.05, 0.0, 0.0, 0.1, 0.0, 0.0, 0.2]
    # Errors that are answers, not failures, are not retried.
    assert attempts.failed(FakeError(grpc.StatusCode.PERMISSION_DENIED, "no")) is None
    attempts.succeeded(sessions_pb2.OpenSessionResponse().header)
    assert endpoints.start(write=True) == attempts.index()


def test_a_spent_budget_gives_up() -> None:
    attempts = _core.Attempts(_core.Endpoints(["a:1"]), write=False, budget=0.0)
    assert attempts.failed(FakeError(grpc.StatusCode.UNAVAILABLE, "down")) is None


def test_health_follows_the_conservative_deadline() -> None:
    clock = _core.SessionClock(opened_at=100.0, ttl=9.0)  # period 3 s, deadline 109
    assert clock.health(now=100.0) is holdfast.Health.HEALTHY
    assert clock.health(now=107.4) is holdfast.Health.HEALTHY
    assert clock.health(now=107.6) is holdfast.Health.AT_RISK
    assert clock.health(now=109.0) is holdfast.Health.LOST
    # An answer to a keepalive sent at 103 with 8.5 s left moves the deadline to 111.5 — not
    # to 103 + TTL: the renewal it asked for was not committed when it was answered.
    clock.acknowledged(103.0, sessions_pb2.KeepAliveResponse(ttl_ms=9000, remaining_ms=8500))
    assert clock.deadline() == 111.5 and clock.health(now=109.0) is holdfast.Health.HEALTHY
    # An older answer never moves it back.
    clock.acknowledged(101.0, sessions_pb2.KeepAliveResponse(ttl_ms=9000, remaining_ms=1000))
    assert clock.deadline() == 111.5
    # Renew a period after the last send, sooner when the deadline is near, never in a loop.
    assert clock.next_keepalive(sent=103.0, now=103.1) == 106.0
    assert clock.next_keepalive(sent=110.0, now=110.1) == 110.1 + 3.0 / 8
    clock.gone = True
    assert clock.health(now=100.0) is holdfast.Health.LOST


def test_the_watch_cursor_drops_what_a_reconnected_stream_repeats() -> None:
    from holdfast.v1 import watch_pb2

    cursor = _core.WatchCursor(from_revision=10)
    event = watch_pb2.WatchEvent(kind=watch_pb2.EVENT_KIND_ACQUIRED, lock="x", token=10)
    assert [
        e.kind for e in cursor.accept(watch_pb2.WatchResponse(revision=10, events=[event]))
    ] == ["ACQUIRED"]
    assert cursor.accept(watch_pb2.WatchResponse(revision=10, events=[event])) == []
    assert cursor.next_revision == 11


def test_a_cancelled_wait_is_asked_again_and_other_failures_are_raised() -> None:
    for code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED):
        _core.not_granted_in_time(holdfast.HoldfastError("not granted", code))
    with pytest.raises(holdfast.PolicyDenied):
        denial = locks_pb2.PolicyDenial(reason="no", policy="p", version=1, prefix="")
        _core.not_granted_in_time(holdfast.PolicyDenied("denied", denial))
    # ABORTED is an answer (ask again as a new request), not a reason to resend the same one.
    attempts = _core.Attempts(_core.Endpoints(["a:1"]), write=True, budget=60.0)
    assert attempts.failed(FakeError(grpc.StatusCode.ABORTED, "wait cancelled")) is None
