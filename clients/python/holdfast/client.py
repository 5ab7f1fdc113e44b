"""The blocking client: :class:`Client`, :class:`Session`, :class:`Hold`, :class:`Leadership`,
:class:`Watch`. Thread-safe; a session renews itself from a background thread.
"""

from __future__ import annotations

import queue
import threading
import time
from types import TracebackType
from typing import (
    Any,
    Callable,
    Dict,
    Iterator,
    List,
    Mapping,
    Optional,
    Sequence,
    Type,
    TypeVar,
    Union,
)

import grpc
from google.protobuf.message import Message

from holdfast import _core, _rpc, errors
from holdfast._core import TLS, Event, Health, Leader, Observation
from holdfast.v1 import (
    cluster_pb2,
    common_pb2,
    elections_pb2,
    locks_pb2,
    sessions_pb2,
    watch_pb2,
)

Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp", bound=Message)


R = TypeVar("R", bound="_Resource")


class _Resource:
    """Something a ``with`` block ends (a client, session, hold, leadership or stream): its
    cleanup's failure is raised after a normal exit, and swallowed while another exception is
    on its way out."""

    def _exit(self) -> None:
        raise NotImplementedError

    def __enter__(self: R) -> R:
        return self

    def __exit__(
        self,
        kind: Optional[Type[BaseException]],
        value: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> None:
        try:
            self._exit()
        except errors.HoldfastError:
            if kind is None:
                raise


class Client(_Resource):
    """A connection to a Holdfast cluster.

    ``endpoints``: any nodes' client addresses (``host:port``); one is enough, more let the
    client ride out a node's loss. Writes go to the leader the servers name; reads to the node
    that last answered. Calls retry UNAVAILABLE answers and broken connections across nodes for
    up to ``RETRY_BUDGET`` seconds, with bounded backoff. ``token``: sent as a bearer token
    (nodes started with a token file). ``tls``: the cluster's CA and, for mutual TLS, this
    client's certificate.
    """

    def __init__(
        self,
        endpoints: Union[str, Sequence[str]] = _core.DEV_ENDPOINTS,
        token: Optional[str] = None,
        tls: Optional[TLS] = None,
    ) -> None:
        self._endpoints = _core.Endpoints(endpoints)
        self._metadata = _core.metadata(token)
        self._credentials = tls.credentials() if tls is not None else None
        self._channels: Dict[str, grpc.Channel] = {}
        self._lock = threading.Lock()
        self._closed = False

    # -- plumbing -------------------------------------------------------------------------

    def _channel(self, index: int) -> grpc.Channel:
        addr = self._endpoints.addr(index)
        with self._lock:
            if self._closed:
                raise errors.HoldfastError("the client is closed")
            channel = self._channels.get(addr)
            if channel is None:
                if self._credentials is not None:
                    channel = grpc.secure_channel(
                        addr, self._credentials, options=_core.CHANNEL_OPTIONS
                    )
                else:
                    channel = grpc.insecure_channel(addr, options=_core.CHANNEL_OPTIONS)
                self._channels[addr] = channel
            return channel

    def _call(
        self,
        method: _rpc.Method[Req, Resp],
        request: Req,
        *,
        write: bool,
        session_call: bool = False,
        deadline: Optional[float] = None,
        header: Callable[[Resp], Optional[common_pb2.ResponseHeader]] = lambda _: None,
    ) -> Resp:
        """One unary call with the retry loop. ``deadline`` (monotonic): when a blocking call's
        attempts must end (default: RPC_TIMEOUT per attempt, within the retry budget)."""
        budget = _core.RETRY_BUDGET
        if deadline is not None:
            budget += max(0.0, deadline - time.monotonic())
        attempts = _core.Attempts(self._endpoints, write, budget)
        while True:
            stub = self._channel(attempts.index()).unary_unary(
                method.path,
                request_serializer=method.request.SerializeToString,
                response_deserializer=method.response.FromString,
            )
            timeout = _core.RPC_TIMEOUT
            if deadline is not None:
                timeout = max(0.001, deadline - time.monotonic())
            try:
                response: Resp = stub(request, timeout=timeout, metadata=self._metadata)
            except grpc.RpcError as error:
                pause = attempts.failed(error)
                if pause is None:
                    raise errors.from_rpc_error(error, session_call=session_call) from None
                time.sleep(pause)
                continue
            attempts.succeeded(header(response))
            return response

    def close(self) -> None:
        """Closes every channel (sessions opened from this client stop renewing)."""
        with self._lock:
            self._closed = True
            channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            channel.close()

    def _exit(self) -> None:
        self.close()

    # -- sessions -------------------------------------------------------------------------

    def session(
        self,
        ttl: float = 10.0,
        principal: str = "",
        labels: Optional[Mapping[str, str]] = None,
        on_lost: Optional[Callable[[Session], None]] = None,
    ) -> Session:
        """Opens a session (``ttl`` seconds, 2..3600) and starts renewing it every TTL/3 from a
        background thread. Use it as a context manager: it is closed on exit, releasing every
        lock it holds. ``principal`` and ``labels`` are what policies see (e.g. a ``tenant``
        label). ``on_lost`` is called (from the keepalive thread) when the session turns LOST."""
        sent = time.monotonic()
        response = self._call(
            _rpc.OPEN,
            _core.session_request(ttl, principal, labels),
            write=True,
            header=lambda r: r.header,
        )
        session = Session(self, response.session_id, response.ttl_ms / 1000.0, sent)
        if on_lost is not None:
            session.on_lost(on_lost)
        session._start()
        return session

    # -- reads ----------------------------------------------------------------------------

    def describe(self, name: str, serializable: bool = False) -> Optional[locks_pb2.LockInfo]:
        """Holders and waiters of one lock (None when nobody holds or waits for it)."""
        response = self._call(
            _rpc.DESCRIBE,
            locks_pb2.DescribeRequest(name=name, serializable=serializable),
            write=False,
        )
        return response.lock if response.HasField("lock") else None

    def list(
        self, prefix: str = "", limit: int = 0, serializable: bool = False
    ) -> List[locks_pb2.LockInfo]:
        """Locks whose names start with ``prefix``, in name order."""
        response = self._call(
            _rpc.LIST,
            locks_pb2.ListRequest(prefix=prefix, limit=limit, serializable=serializable),
            write=False,
        )
        return list(response.locks)

    def revision(self) -> int:
        """The cluster's current revision (log index), read linearizably."""
        response = self._call(_rpc.LIST, locks_pb2.ListRequest(prefix="", limit=1), write=False)
        return response.header.revision

    def check_token(self, name: str, token: int, serializable: bool = False) -> bool:
        """Is ``token`` a current hold of lock ``name``? (Chubby's CheckSequencer.)"""
        response = self._call(
            _rpc.CHECK_TOKEN,
            locks_pb2.CheckTokenRequest(name=name, token=token, serializable=serializable),
            write=False,
        )
        return response.current

    def status(self) -> cluster_pb2.StatusResponse:
        """The answering node's view of the cluster (role, term, leader, indexes)."""
        return self._call(_rpc.STATUS, cluster_pb2.StatusRequest(), write=False)

    # -- elections ------------------------------------------------------------------------

    def leader(self, name: str, serializable: bool = False) -> Optional[Leader]:
        """The current leader of election ``name`` (None when nobody leads)."""
        response = self._call(
            _rpc.LEADER,
            elections_pb2.LeaderRequest(name=name, serializable=serializable),
            write=False,
        )
        return Leader.from_pb(response.leader) if response.HasField("leader") else None

    def observe(self, name: str) -> Observe:
        """The current leader of election ``name``, then every change (new leader,
        proclamation, no leader), as :class:`Observation` objects. Reconnects to another node
        when its node fails, without repeating what it delivered."""
        return Observe(self, name)

    # -- watch ----------------------------------------------------------------------------

    def watch(self, prefix: str = "", from_revision: int = 0) -> Watch:
        """Every change to locks whose names start with ``prefix`` (session events too when
        ``prefix`` is empty) from ``from_revision`` on (0 = changes after this call), one
        :class:`Event` at a time. Resumes after the last delivered revision when its node
        fails; raises :class:`holdfast.errors.Compacted` when the revisions it needs are no
        longer kept."""
        if from_revision == 0:
            from_revision = self.revision() + 1
        return Watch(self, prefix, from_revision)


class Session(_Resource):
    """An open session: renewed every TTL/3 by a background thread over a KeepAlive stream,
    closed by :meth:`close` or on leaving its ``with`` block."""

    def __init__(self, client: Client, session_id: int, ttl: float, opened_at: float) -> None:
        self.client = client
        self.id = session_id
        self.ttl = ttl
        self._state = _core.SessionState[Session](session_id, ttl, opened_at)
        self._stopped = threading.Event()
        self._renewing = threading.Event()
        self._renewing.set()
        self._wakeup = threading.Event()
        self._thread = threading.Thread(
            target=self._keep_alive, name=f"holdfast-keepalive-{session_id}", daemon=True
        )
        #: The keepalive stream in use (close() ends it so the thread stops at once).
        self._stream: Optional[_KeepAliveStream] = None

    def _start(self) -> None:
        self._thread.start()

    # -- health ---------------------------------------------------------------------------

    @property
    def health(self) -> Health:
        """HEALTHY, AT_RISK or LOST, judged now from the client's conservative deadline."""
        return self._state.clock.health()

    @property
    def deadline(self) -> float:
        """``time.monotonic()`` value until which the session is surely alive on the server."""
        return self._state.clock.deadline()

    def on_lost(self, callback: Callable[[Session], None]) -> None:
        """Calls ``callback(session)`` when the session turns LOST (at once if it is)."""
        self._state.add_callback(callback, self)

    def pause_keepalive(self) -> None:
        """Stops renewing, as a hung client would (the session is not closed; health still
        turns AT_RISK, then LOST, on time). For tests and drills."""
        self._renewing.clear()

    def resume_keepalive(self) -> None:
        self._renewing.set()
        self._wakeup.set()

    def _sleep_until(self, wake: float) -> bool:
        """Sleeps until ``wake`` (monotonic), re-judging health at each change and reporting
        LOST on time. False when the session is closing."""
        while True:
            self._state.report_health(self)
            now = time.monotonic()
            if now >= wake:
                return not self._stopped.is_set()
            pause = min(wake, self._state.clock.next_change(now)) - now
            if self._wakeup.wait(max(0.0, pause)):
                self._wakeup.clear()
                return not self._stopped.is_set()
            if self._stopped.is_set():
                return False

    def _keep_alive(self) -> None:
        stream: Optional[_KeepAliveStream] = None
        attempts = _core.Attempts(self.client._endpoints, write=True, budget=float("inf"))
        try:
            while not self._stopped.is_set():
                if not self._renewing.is_set():
                    if stream is not None:
                        stream.close()
                        stream = None
                    self._sleep_until(time.monotonic() + self._state.clock.period)
                    continue
                sent = time.monotonic()
                try:
                    if stream is None:
                        stream = self._stream = _KeepAliveStream(self.client, attempts.index())
                        if self._stopped.is_set():
                            return
                    response = stream.renew(self)
                except grpc.RpcError as error:
                    if stream is not None:
                        stream.close()
                        stream = None
                    retry_at = self._state.failed(attempts, error)
                    if retry_at is None:  # the server says the session is gone
                        self._state.report_health(self)
                        return
                    wake = retry_at
                else:
                    wake = self._state.answered(attempts, sent, response)
                if not self._sleep_until(wake):
                    return
        except errors.HoldfastError:  # the client was closed under the session
            return
        finally:
            if stream is not None:
                stream.close()

    # -- locks ----------------------------------------------------------------------------

    def lock(
        self,
        name: str,
        timeout: Optional[float] = 30.0,
        shared: bool = False,
        max_holders: int = 0,
        priority: int = 0,
    ) -> Hold:
        """Waits up to ``timeout`` seconds (None: without limit) for lock ``name`` and returns
        the :class:`Hold`; use it as a context manager to release it on exit. Raises
        :class:`~holdfast.errors.LockTimeout` when not granted in time,
        :class:`~holdfast.errors.PolicyDenied` when a policy refuses, and
        :class:`~holdfast.errors.SessionLost` when the session ends while waiting."""
        wait = _core.Wait(f"lock {name}", timeout)
        while True:
            grant = self._acquire(name, wait.next_ms(), shared, max_holders, priority)
            if grant is not None:
                return Hold(self, grant)
            wait.not_granted()

    def try_lock(
        self, name: str, shared: bool = False, max_holders: int = 0, priority: int = 0
    ) -> Optional[Hold]:
        """Takes lock ``name`` if it is free now; None if it is held. Raises
        :class:`~holdfast.errors.LockDelayed` when it is free but in lock-delay."""
        grant = self._acquire(name, 0, shared, max_holders, priority)
        return Hold(self, grant) if grant is not None else None

    def _acquire(
        self, name: str, wait_ms: int, shared: bool, max_holders: int, priority: int
    ) -> Optional[_core.Grant]:
        try:
            response = self.client._call(
                _rpc.ACQUIRE,
                self._state.acquire(name, wait_ms, shared, max_holders, priority),
                write=True,
                session_call=True,
                deadline=_core.Wait.rpc_deadline(wait_ms),
                header=lambda r: r.header,
            )
        except errors.HoldfastError as error:
            _core.not_granted_in_time(error)
            return None
        return _core.grant_of(name, response)

    def _release(self, name: str, token: int) -> int:
        response = self.client._call(
            _rpc.RELEASE,
            self._state.release(name, token),
            write=True,
            session_call=True,
            header=lambda r: r.header,
        )
        return response.released_at

    # -- elections ------------------------------------------------------------------------

    def campaign(
        self,
        name: str,
        value: bytes = b"",
        timeout: Optional[float] = None,
        priority: int = 0,
    ) -> Leadership:
        """Waits until this session leads election ``name`` (up to ``timeout`` seconds; None:
        without limit) and returns the :class:`Leadership`; resigned on leaving its ``with``
        block. Raises :class:`~holdfast.errors.LockTimeout` when not elected in time."""
        wait = _core.Wait(f"leadership of {name}", timeout)
        while True:
            wait_ms = wait.next_ms()
            try:
                response = self.client._call(
                    _rpc.CAMPAIGN,
                    self._state.campaign(name, value, wait_ms, priority),
                    write=True,
                    session_call=True,
                    deadline=_core.Wait.rpc_deadline(wait_ms),
                    header=lambda r: r.header,
                )
            except errors.HoldfastError as error:
                _core.not_granted_in_time(error)
            else:
                if response.HasField("leader"):
                    return Leadership(self, response.leader, value, response.header.revision)
            wait.not_granted()

    # -- closing --------------------------------------------------------------------------

    def close(self) -> None:
        """Stops renewing and closes the session, releasing everything it holds. A session
        that is already gone is not an error."""
        self._stopped.set()
        self._wakeup.set()
        stream = self._stream
        if stream is not None:
            stream.close()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=_core.RPC_TIMEOUT)
        try:
            self.client._call(
                _rpc.CLOSE,
                self._state.close(),
                write=True,
                session_call=True,
                header=lambda r: r.header,
            )
        except errors.SessionLost:
            pass

    def _exit(self) -> None:
        self.close()


class _KeepAliveStream:
    """One KeepAlive stream to one node: requests go in through a queue, answers come back
    through another, read by a helper thread so that waiting for one can time out."""

    def __init__(self, client: Client, index: int) -> None:
        self._requests: queue.Queue[Optional[sessions_pb2.KeepAliveRequest]] = queue.Queue()
        self._answers: queue.Queue[Union[sessions_pb2.KeepAliveResponse, grpc.RpcError, None]] = (
            queue.Queue()
        )
        stub = client._channel(index).stream_stream(
            _rpc.KEEP_ALIVE.path,
            request_serializer=_rpc.KEEP_ALIVE.request.SerializeToString,
            response_deserializer=_rpc.KEEP_ALIVE.response.FromString,
        )
        self._call = stub(iter(self._requests.get, None), metadata=client._metadata)
        self._reader = threading.Thread(target=self._read, name="holdfast-keepalive-reader")
        self._reader.daemon = True
        self._reader.start()

    def _read(self) -> None:
        try:
            for answer in self._call:
                self._answers.put(answer)
            self._answers.put(None)
        except grpc.RpcError as error:
            self._answers.put(error)

    def renew(self, session: Session) -> sessions_pb2.KeepAliveResponse:
        """Sends one keepalive and waits up to a renewal period for its answer, reporting
        health changes meanwhile. Raises ``grpc.RpcError`` on any failure (a timeout or a
        closed stream as UNAVAILABLE)."""
        state = session._state
        self._requests.put(state.keepalive())
        give_up = time.monotonic() + min(state.clock.period, _core.RPC_TIMEOUT)
        while True:
            now = time.monotonic()
            if now >= give_up:
                raise _core.StreamFailed("keepalive not answered in time")
            try:
                answer = self._answers.get(
                    timeout=max(0.0, min(give_up, state.clock.next_change(now)) - now)
                )
            except queue.Empty:
                state.report_health(session)
                continue
            if isinstance(answer, grpc.RpcError):
                raise answer
            if answer is None:
                raise _core.StreamFailed("keepalive stream ended")
            return answer

    def close(self) -> None:
        self._requests.put(None)
        self._call.cancel()


class Hold(_core.HoldState, _Resource):
    """A granted lock. ``token`` is its fencing token: hand it to the resource you protect and
    have it reject lower tokens (or ask :meth:`is_current`). Released by :meth:`release` or on
    leaving its ``with`` block, exceptions included."""

    def __init__(self, session: Session, grant: _core.Grant) -> None:
        super().__init__(grant)
        self.session = session

    def is_current(self, serializable: bool = False) -> bool:
        """Is this hold still current (not released, expired, revoked or taken over)?"""
        return self.session.client.check_token(self.name, self.token, serializable)

    def release(self) -> int:
        """Releases the hold; the log index at which it ended. Releasing twice is a no-op."""
        if self.released_at is None:
            self.released_at = self.session._release(self.name, self.token)
        return self.released_at

    def _exit(self) -> None:
        self.release()


class Leadership(_core.LeadershipState, _Resource):
    """This session leads an election. ``token`` is the leadership's fencing token."""

    def __init__(
        self, session: Session, key: elections_pb2.LeaderKey, value: bytes, revision: int
    ) -> None:
        super().__init__(key, value, revision)
        self.session = session

    def proclaim(self, value: bytes) -> None:
        """Replaces the leader's value (observers see it). Raises
        :class:`~holdfast.errors.StaleToken` if this session no longer leads."""
        self.session.client._call(
            _rpc.PROCLAIM,
            self.proclaim_request(value),
            write=True,
            session_call=True,
            header=lambda r: r.header,
        )
        self.value = value

    def is_current(self, serializable: bool = False) -> bool:
        return self.session.client.check_token(self.name, self.token, serializable)

    def resign(self) -> None:
        """Gives up leadership; the next candidate, if any, is elected. Twice is a no-op."""
        if not self.resigned:
            self.session.client._call(
                _rpc.RESIGN,
                self.session._state.resign(self.key),
                write=True,
                session_call=True,
                header=lambda r: r.header,
            )
            self.resigned = True

    def _exit(self) -> None:
        self.resign()


class _Stream(_Resource):
    """A server stream that reconnects (to the next node, or the one a hint names) on
    retryable failures, within the retry budget counted from its last delivery. Subclasses
    open the call in their constructor, so nothing after it is missed."""

    def __init__(self, client: Client, method: _rpc.Method[Req, Resp]) -> None:
        self._client = client
        self._method: _rpc.Method[Any, Any] = method
        self._closed = False
        self._attempts = _core.Attempts(client._endpoints, write=False)
        self._call: Optional[Iterator[Message]] = None

    def _request(self) -> Message:
        raise NotImplementedError

    def _open(self) -> Iterator[Message]:
        stub = self._client._channel(self._attempts.index()).unary_stream(
            self._method.path,
            request_serializer=self._method.request.SerializeToString,
            response_deserializer=self._method.response.FromString,
        )
        call: Iterator[Message] = stub(self._request(), metadata=self._client._metadata)
        return call

    def _next_message(self) -> Optional[Message]:
        """The next message; None once closed."""
        while not self._closed:
            if self._call is None:
                self._call = self._open()
            try:
                message = next(self._call)
            except StopIteration:  # the node ended the stream (e.g. shutting down)
                self._call = None
                pause = _core.stream_ended(self._attempts)
            except grpc.RpcError as error:
                self._call = None
                if self._closed:
                    return None
                pause = _core.stream_failed(self._attempts, error)
            else:
                self._attempts = _core.Attempts(self._client._endpoints, write=False)
                return message
            time.sleep(pause)
        return None

    def close(self) -> None:
        """Ends the stream (from any thread)."""
        self._closed = True
        call = self._call
        if isinstance(call, grpc.Call):
            call.cancel()

    def _exit(self) -> None:
        self.close()


class Watch(_Stream):
    """Iterator of :class:`Event` (see :meth:`Client.watch`)."""

    def __init__(self, client: Client, prefix: str, from_revision: int) -> None:
        super().__init__(client, _rpc.WATCH)
        self.prefix = prefix
        self._cursor = _core.WatchCursor(from_revision)
        self._pending: List[Event] = []
        self._call = self._open()

    @property
    def next_revision(self) -> int:
        """The revision the watch resumes from."""
        return self._cursor.next_revision

    def _request(self) -> Message:
        return watch_pb2.WatchRequest(prefix=self.prefix, from_revision=self.next_revision)

    def __iter__(self) -> Watch:
        return self

    def __next__(self) -> Event:
        while not self._pending:
            message = self._next_message()
            if message is None:
                raise StopIteration
            assert isinstance(message, watch_pb2.WatchResponse)
            self._pending = self._cursor.accept(message)
        return self._pending.pop(0)


class Observe(_Stream):
    """Iterator of :class:`Observation` (see :meth:`Client.observe`)."""

    def __init__(self, client: Client, name: str) -> None:
        super().__init__(client, _rpc.OBSERVE)
        self.name = name
        self._cursor = _core.ObserveCursor()
        self._call = self._open()

    def _request(self) -> Message:
        return elections_pb2.ObserveRequest(name=self.name)

    def __iter__(self) -> Observe:
        return self

    def __next__(self) -> Observation:
        while True:
            message = self._next_message()
            if message is None:
                raise StopIteration
            assert isinstance(message, elections_pb2.ObserveResponse)
            observation = self._cursor.accept(message)
            if observation is not None:
                return observation
