"""What the blocking client (`holdfast.client`) and the asyncio client (`holdfast.aio`) share:
the endpoint set with its leader memory, the retry decisions, the session deadline, request
building and the results users see. No I/O happens here; both clients only add their own way
of waiting.
"""

from __future__ import annotations

import enum
import threading
import time
import logging
from dataclasses import dataclass
from typing import Callable, Generic, List, Mapping, Optional, Sequence, Tuple, TypeVar, Union

import grpc

from holdfast import errors
from holdfast.v1 import common_pb2, elections_pb2, locks_pb2, sessions_pb2, watch_pb2

#: Default endpoints of ``holdfast dev``.
DEV_ENDPOINTS = ("127.0.0.1:7701", "127.0.0.1:7702", "127.0.0.1:7703")
#: How long one call keeps retrying across endpoints before giving up (seconds).
RETRY_BUDGET = 15.0
#: First pause after a round over every endpoint failed; doubles up to RETRY_PAUSE_MAX.
RETRY_PAUSE = 0.05
RETRY_PAUSE_MAX = 1.0
#: Deadline of one non-blocking call attempt (seconds).
RPC_TIMEOUT = 6.0
#: Longest wait the server accepts for one Acquire or Campaign (its WAIT_TIMEOUT_MS_MAX).
LOCK_WAIT_MAX = 3600.0
#: Most endpoints a client keeps (the given ones plus leaders the servers named).
ENDPOINTS_MAX = 32
#: Channel options: reconnect to a restarted node within a second, not after minutes of
#: gRPC's default backoff.
CHANNEL_OPTIONS: List[Tuple[str, Union[int, str]]] = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.enable_retries", 0),
]

#: Codes after which another node (or the same one later) may succeed. Every call the client
#: retries is idempotent: lock, election and release requests carry the session's request id.
_RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.UNKNOWN,
}


@dataclass(frozen=True)
class TLS:
    """TLS towards the cluster: the CA certificate (PEM) that signs the nodes' certificates and,
    for mutual TLS, this client's certificate and key (PEM). Paths or bytes."""

    ca: Union[bytes, str]
    cert: Union[bytes, str, None] = None
    key: Union[bytes, str, None] = None

    def credentials(self) -> grpc.ChannelCredentials:
        def read(value: Union[bytes, str, None]) -> Optional[bytes]:
            if value is None or isinstance(value, bytes):
                return value
            with open(value, "rb") as file:
                return file.read()

        return grpc.ssl_channel_credentials(
            root_certificates=read(self.ca),
            private_key=read(self.key),
            certificate_chain=read(self.cert),
        )


def metadata(token: Optional[str]) -> Tuple[Tuple[str, str], ...]:
    """What every call carries: ``authorization: Bearer <token>`` when a token is set."""
    if token is None:
        return ()
    if not token.isprintable() or not token.isascii() or not token:
        raise ValueError("the token must be non-empty printable ASCII")
    return (("authorization", f"Bearer {token}"),)


class Endpoints:
    """The nodes a client talks to, where reads start (the node that last answered) and where
    writes start (the leader a response header or an UNAVAILABLE answer last named)."""

    def __init__(self, addrs: Union[str, Sequence[str]]) -> None:
        """``addrs``: one ``host:port`` or several."""
        if isinstance(addrs, str):
            addrs = [addrs]
        self._addrs = [addr.strip() for addr in addrs if addr.strip()]
        if not self._addrs:
            raise ValueError("at least one endpoint is required, e.g. '127.0.0.1:7701'")
        self._lock = threading.Lock()
        self._preferred = 0
        self._leader: Optional[int] = None

    def addrs(self) -> List[str]:
        with self._lock:
            return list(self._addrs)

    def addr(self, index: int) -> str:
        with self._lock:
            return self._addrs[index % len(self._addrs)]

    def start(self, write: bool) -> int:
        with self._lock:
            if write and self._leader is not None:
                return self._leader
            return self._preferred

    def count(self) -> int:
        with self._lock:
            return len(self._addrs)

    def answered(self, index: int, write: bool) -> None:
        with self._lock:
            if write:
                self._leader = index
            else:
                self._preferred = index

    def index_of(self, addr: str) -> Optional[int]:
        """The index of ``addr``, added to the set (within ENDPOINTS_MAX) if it is new: a
        leader the servers name is worth talking to even if the user did not list it."""
        if not addr:
            return None
        with self._lock:
            if addr in self._addrs:
                return self._addrs.index(addr)
            if len(self._addrs) >= ENDPOINTS_MAX:
                return None
            self._addrs.append(addr)
            return len(self._addrs) - 1

    def note_leader(self, header: Optional[common_pb2.ResponseHeader]) -> None:
        if header is not None and header.leader_addr:
            index = self.index_of(header.leader_addr)
            if index is not None:
                with self._lock:
                    self._leader = index


class Attempts:
    """The retry loop's decisions for one call: which endpoint next, and whether and how long
    to pause after a failure. Follows a leader hint once per call; after each full round of
    endpoints pauses RETRY_PAUSE, doubling to RETRY_PAUSE_MAX; gives up at the deadline."""

    def __init__(self, endpoints: Endpoints, write: bool, budget: float = RETRY_BUDGET) -> None:
        self._endpoints = endpoints
        self._write = write
        self._start = endpoints.start(write)
        self._attempt = 0
        self._followed_hint = False
        self._pause = RETRY_PAUSE
        self.deadline = time.monotonic() + budget

    def index(self) -> int:
        return (self._start + self._attempt) % self._endpoints.count()

    def succeeded(self, header: Optional[common_pb2.ResponseHeader] = None) -> None:
        self._endpoints.answered(self.index(), self._write)
        if self._write:
            self._endpoints.note_leader(header)

    def failed(self, error: grpc.RpcError) -> Optional[float]:
        """After a failed attempt: None to give up (not retryable, or out of time), else the
        pause before the next attempt."""
        if errors.code_of(error) not in _RETRYABLE or time.monotonic() >= self.deadline:
            return None
        return self.retry(errors.trailing(error, errors.LEADER_ADDR_KEY))

    def retry(self, hint: Union[str, bytes, None] = None) -> Optional[float]:
        """Moves on to the hinted leader or the next endpoint; the pause before trying it."""
        if time.monotonic() >= self.deadline:
            return None
        if isinstance(hint, bytes):
            hint = hint.decode(errors="replace")
        leader = self._endpoints.index_of(hint) if hint else None
        if not self._followed_hint and leader is not None and leader != self.index():
            self._followed_hint = True
            self._start, self._attempt = leader, 0
            return 0.0
        self._attempt += 1
        if self._attempt % self._endpoints.count() != 0:
            return 0.0
        pause, self._pause = self._pause, min(self._pause * 2, RETRY_PAUSE_MAX)
        return min(pause, max(0.0, self.deadline - time.monotonic()))


class Health(enum.Enum):
    """How safe it is to act as the session's lock holder, judged by the client alone from its
    conservative deadline: the send time of the last acknowledged keepalive + the time the
    leader said the session had left (``remaining_ms``)."""

    #: Renewals are being acknowledged.
    HEALTHY = "healthy"
    #: Less than half a renewal period is left before the deadline: a keepalive is overdue.
    #: Stop starting new work under the session's locks.
    AT_RISK = "at_risk"
    #: The deadline passed, or the server said the session is gone: the server may have expired
    #: it and its locks may belong to someone else. Stop using them. (Recovers to HEALTHY if a
    #: later keepalive is acknowledged, unless the server said the session is gone.)
    LOST = "lost"


class SessionClock:
    """A session's deadline and renewal schedule (monotonic seconds)."""

    def __init__(self, opened_at: float, ttl: float) -> None:
        self.ttl = ttl
        self.period = ttl / 3
        self._lock = threading.Lock()
        self._deadline = opened_at + ttl
        self.gone = False

    def deadline(self) -> float:
        with self._lock:
            return self._deadline

    def acknowledged(self, sent: float, response: sessions_pb2.KeepAliveResponse) -> None:
        """A keepalive sent at ``sent`` was answered: the session had ``remaining_ms`` left when
        the leader looked, which was after ``sent``."""
        remaining = (response.remaining_ms or response.ttl_ms) / 1000.0
        with self._lock:
            self._deadline = max(self._deadline, sent + remaining)

    def health(self, now: Optional[float] = None) -> Health:
        now = time.monotonic() if now is None else now
        deadline = self.deadline()
        if self.gone or now >= deadline:
            return Health.LOST
        if now >= deadline - self.period / 2:
            return Health.AT_RISK
        return Health.HEALTHY

    def next_change(self, now: float) -> float:
        """When health may next change without a new answer."""
        deadline = self.deadline()
        at_risk = deadline - self.period / 2
        return at_risk if now < at_risk else deadline if now < deadline else now + self.period

    def next_keepalive(self, sent: float, now: float) -> float:
        """A renewal period after the last one, or sooner when the deadline is nearer than two
        periods (a renewal that did not commit), but never in a tight loop."""
        soonest = now + self.period / 8
        return max(min(sent + self.period, self.deadline() - self.period), soonest)


@dataclass(frozen=True)
class Leader:
    """An election's leader: the leader key (name, session, token) and its value."""

    name: str
    session_id: int
    token: int
    value: bytes

    @staticmethod
    def from_pb(leadership: elections_pb2.Leadership) -> Leader:
        key = leadership.key
        return Leader(key.name, key.session_id, key.token, leadership.value)


@dataclass(frozen=True)
class Observation:
    """One change of an election's leader (``leader`` is None when nobody leads)."""

    revision: int
    leader: Optional[Leader]


def _enum_name(value: int, enum_type: str, prefix: str) -> str:
    try:
        name = watch_pb2.DESCRIPTOR.enum_types_by_name[enum_type].values_by_number[value].name
    except KeyError:
        return str(value)
    return name[len(prefix) :] if name.startswith(prefix) else name


@dataclass(frozen=True)
class Event:
    """One change, as the watch delivers it. ``kind`` is the event kind without its prefix
    (``ACQUIRED``, ``RELEASED``, ``QUEUED``, ``SESSION_EXPIRED``…) and ``reason`` why a hold
    ended or a waiter left (``RELEASED``, ``SESSION_EXPIRED``… or ``NONE``)."""

    revision: int
    kind: str
    lock: str
    session_id: int
    token: int = 0
    reason: str = "NONE"
    shared: bool = False
    lease_ms: int = 0
    position: int = 0
    value: bytes = b""
    principal: str = ""
    policy: str = ""
    policy_version: int = 0
    prefix: str = ""
    hook: str = ""

    @staticmethod
    def from_pb(revision: int, event: watch_pb2.WatchEvent) -> Event:
        return Event(
            revision=revision,
            kind=_enum_name(event.kind, "EventKind", "EVENT_KIND_"),
            lock=event.lock,
            session_id=event.session_id,
            token=event.token,
            reason=_enum_name(event.reason, "EventReason", "EVENT_REASON_"),
            shared=event.mode == locks_pb2.LOCK_MODE_SHARED,
            lease_ms=event.lease_ms,
            position=event.position,
            value=event.value,
            principal=event.principal,
            policy=event.policy,
            policy_version=event.policy_version,
            prefix=event.prefix,
            hook=event.hook,
        )


class WatchCursor:
    """Where a watch resumes: the revision after the last one delivered. Drops revisions a
    reconnected stream repeats."""

    def __init__(self, from_revision: int) -> None:
        self.next_revision = from_revision

    def accept(self, response: watch_pb2.WatchResponse) -> List[Event]:
        if response.revision < self.next_revision:
            return []
        self.next_revision = response.revision + 1
        return [Event.from_pb(response.revision, event) for event in response.events]


class ObserveCursor:
    """Drops what a reconnected Observe stream repeats: it starts with the current leader."""

    def __init__(self) -> None:
        self.last: Optional[Observation] = None

    def accept(self, response: elections_pb2.ObserveResponse) -> Optional[Observation]:
        leader = Leader.from_pb(response.leader) if response.HasField("leader") else None
        last = self.last
        if last is not None and (response.revision <= last.revision or leader == last.leader):
            return None
        self.last = Observation(response.revision, leader)
        return self.last


#: Codes after which a watch or observe stream reconnects (a slow watcher cut off with
#: RESOURCE_EXHAUSTED resumes from its last revision too).
STREAM_RETRYABLE = _RETRYABLE | {grpc.StatusCode.RESOURCE_EXHAUSTED}


def millis(seconds: float, what: str) -> int:
    if seconds < 0:
        raise ValueError(f"{what} must not be negative, got {seconds}")
    return int(round(seconds * 1000))


def wait_ms(timeout: Optional[float]) -> int:
    """A wait timeout for the server: ``None`` waits as long as the server allows (the client
    asks again after that)."""
    if timeout is None:
        return millis(LOCK_WAIT_MAX, "timeout")
    return millis(min(timeout, LOCK_WAIT_MAX), "timeout")


def session_request(
    ttl: float, principal: str, labels: Optional[Mapping[str, str]]
) -> sessions_pb2.OpenSessionRequest:
    return sessions_pb2.OpenSessionRequest(
        ttl_ms=millis(ttl, "ttl"), principal=principal, labels=dict(labels or {})
    )


@dataclass(frozen=True)
class Grant:
    """A granted Acquire, before it is wrapped in a Hold."""

    name: str
    token: int
    lease_ms: int
    revision: int
    reentrant: bool


def grant_of(name: str, response: locks_pb2.AcquireResponse) -> Optional[Grant]:
    """The grant in an Acquire answer; None when not granted (would block, timed out); raises
    LockDelayed when the lock is in lock-delay."""
    if response.status == locks_pb2.ACQUIRE_STATUS_ACQUIRED:
        return Grant(
            name,
            response.token,
            response.lease_ms,
            response.header.revision,
            response.reentrant,
        )
    if response.delayed_until_ms > response.header.now_ms:
        raise errors.LockDelayed(name, response.delayed_until_ms, response.header.now_ms)
    return None


class StreamFailed(grpc.RpcError):
    """A stream that stopped answering, handled like a broken connection (UNAVAILABLE)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self._message = message

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return self._message


S = TypeVar("S")

log = logging.getLogger("holdfast")


class SessionState(Generic[S]):
    """What a session keeps besides its connection: id, TTL, deadline (``clock``), the request
    ids that make its retries idempotent, and its ``on_lost`` callbacks (called once per turn
    to LOST). Builds the session's requests. ``S`` is the session type the callbacks get."""

    def __init__(self, session_id: int, ttl: float, opened_at: float) -> None:
        self.id = session_id
        self.ttl = ttl
        self.clock = SessionClock(opened_at, ttl)
        self._next_request_id = 1
        self._callbacks: List[Callable[[S], None]] = []
        self._reported_lost = False
        self._lock = threading.Lock()

    def request_id(self) -> int:
        """Unique within the session: the server applies a retried request once."""
        with self._lock:
            value, self._next_request_id = self._next_request_id, self._next_request_id + 1
            return value

    def add_callback(self, callback: Callable[[S], None], session: S) -> None:
        with self._lock:
            self._callbacks.append(callback)
            lost = self._reported_lost
        if lost:
            callback(session)

    def report_health(self, session: S) -> None:
        """Calls the on_lost callbacks if the session just turned LOST."""
        lost = self.clock.health() is Health.LOST
        with self._lock:
            fire = lost and not self._reported_lost
            self._reported_lost = lost
            callbacks = list(self._callbacks) if fire else []
        for callback in callbacks:
            try:
                callback(session)
            except Exception:
                log.exception("holdfast: an on_lost callback of session %d failed", self.id)

    def answered(
        self, attempts: Attempts, sent: float, response: sessions_pb2.KeepAliveResponse
    ) -> float:
        """A keepalive sent at ``sent`` was answered: when to send the next."""
        self.clock.acknowledged(sent, response)
        attempts.succeeded()
        return self.clock.next_keepalive(sent, time.monotonic())

    def failed(self, attempts: Attempts, error: grpc.RpcError) -> Optional[float]:
        """A keepalive failed: None when the server said the session is gone, else when to
        try again (on the hinted leader or the next node)."""
        if errors.code_of(error) == grpc.StatusCode.NOT_FOUND:
            self.clock.gone = True
            return None
        attempts.retry(errors.trailing(error, errors.LEADER_ADDR_KEY))
        return time.monotonic() + min(self.clock.period / 8, 0.25)

    def keepalive(self) -> sessions_pb2.KeepAliveRequest:
        return sessions_pb2.KeepAliveRequest(session_id=self.id)

    def acquire(
        self, name: str, wait_ms: int, shared: bool, max_holders: int, priority: int
    ) -> locks_pb2.AcquireRequest:
        return locks_pb2.AcquireRequest(
            session_id=self.id,
            request_id=self.request_id(),
            name=name,
            mode=locks_pb2.LOCK_MODE_SHARED if shared else locks_pb2.LOCK_MODE_EXCLUSIVE,
            max_holders=max_holders,
            wait_timeout_ms=wait_ms,
            priority=priority,
        )

    def release(self, name: str, token: int) -> locks_pb2.ReleaseRequest:
        return locks_pb2.ReleaseRequest(
            session_id=self.id, request_id=self.request_id(), name=name, token=token
        )

    def campaign(
        self, name: str, value: bytes, wait_ms: int, priority: int
    ) -> elections_pb2.CampaignRequest:
        return elections_pb2.CampaignRequest(
            session_id=self.id,
            request_id=self.request_id(),
            name=name,
            value=value,
            wait_timeout_ms=wait_ms,
            priority=priority,
        )

    def resign(self, key: elections_pb2.LeaderKey) -> elections_pb2.ResignRequest:
        return elections_pb2.ResignRequest(leader=key, request_id=self.request_id())

    def close(self) -> sessions_pb2.CloseSessionRequest:
        return sessions_pb2.CloseSessionRequest(session_id=self.id)


class Wait:
    """A lock or campaign wait of ``timeout`` seconds (None: without limit), asked of the
    server in pieces of at most LOCK_WAIT_MAX."""

    def __init__(self, name: str, timeout: Optional[float]) -> None:
        self.name = name
        self.timeout = timeout
        self.deadline = None if timeout is None else time.monotonic() + timeout

    def next_ms(self) -> int:
        """The server-side wait of the next request."""
        if self.deadline is None:
            return wait_ms(None)
        return wait_ms(max(0.0, self.deadline - time.monotonic()))

    @staticmethod
    def rpc_deadline(wait_ms: int) -> float:
        """When the client stops waiting for the answer to a request waiting ``wait_ms``."""
        return time.monotonic() + wait_ms / 1000.0 + RPC_TIMEOUT

    def not_granted(self) -> None:
        """A request was not granted: raises LockTimeout once the wait has run out (never for
        an unbounded wait); otherwise the caller asks again for the time left."""
        if self.deadline is not None and time.monotonic() >= self.deadline - WAIT_SLACK:
            raise errors.LockTimeout(
                f"{self.name} was not granted within {self.timeout} s", self.name
            )


#: Time left on a wait below which it counts as run out.
WAIT_SLACK = 0.05


def not_granted_in_time(error: errors.HoldfastError) -> None:
    """A blocking request failed. Not granted (the caller may ask again, as a new request)
    when its answer did not come before the client's deadline, or when the server says its
    wait was cancelled under it (ABORTED: an earlier attempt's connection broke and this retry
    found the recorded cancellation). Any other failure is raised."""
    if error.code not in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED):
        raise error


class HoldState:
    """A granted lock's facts (the blocking and asyncio Holds add release and checks)."""

    def __init__(self, grant: Grant) -> None:
        self.name = grant.name
        #: The fencing token: hand it to the resource you protect.
        self.token = grant.token
        #: The policy's lease in seconds (None: the hold lasts while the session lives).
        self.lease: Optional[float] = grant.lease_ms / 1000.0 if grant.lease_ms else None
        #: Log index at which the grant was applied.
        self.revision = grant.revision
        #: True when the session already held the lock and this is the same hold.
        self.reentrant = grant.reentrant
        #: Log index at which the hold ended, once released through this object.
        self.released_at: Optional[int] = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, token={self.token})"


class LeadershipState:
    """An election won: the leader key (its token is the leadership's fencing token)."""

    def __init__(self, key: elections_pb2.LeaderKey, value: bytes, revision: int) -> None:
        self.key = key
        self.name = key.name
        self.token = key.token
        self.value = value
        self.revision = revision
        self.resigned = False

    def proclaim_request(self, value: bytes) -> elections_pb2.ProclaimRequest:
        return elections_pb2.ProclaimRequest(leader=self.key, value=value)


def stream_failed(attempts: Attempts, error: grpc.RpcError) -> float:
    """A watch or observe stream failed: the pause before reconnecting, or raises."""
    pause = None
    if errors.code_of(error) in STREAM_RETRYABLE:
        pause = attempts.retry(errors.trailing(error, errors.LEADER_ADDR_KEY))
    if pause is None:
        raise errors.from_rpc_error(error) from None
    return pause


def stream_ended(attempts: Attempts) -> float:
    """A node ended a stream (e.g. shutting down): the pause before reconnecting, or raises."""
    pause = attempts.retry()
    if pause is None:
        raise errors.Unavailable("the stream could not be resumed on any node")
    return pause
