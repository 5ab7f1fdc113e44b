"""The asyncio client: the API of :mod:`holdfast.client` on ``grpc.aio``.

::

    async with holdfast.aio.Client(["127.0.0.1:7701"]) as client:
        async with client.session(ttl=10.0) as session:
            async with session.lock("reports/nightly") as hold:
                print(hold.token)

``client.session(...)``, ``session.lock(...)`` and ``session.campaign(...)`` may be awaited
(then close/release/resign yourself) or entered with ``async with``. A session renews itself
from a task on the running loop.
"""

from __future__ import annotations

import asyncio
import time
from types import TracebackType
from typing import (
    Any,
    AsyncIterator,
    Awaitable,
    Callable,
    Dict,
    Generator,
    Generic,
    List,
    Mapping,
    Optional,
    Sequence,
    Type,
    TypeVar,
    Union,
)

import grpc
import grpc.aio
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

__all__ = ["Client", "Session", "Hold", "Leadership", "Watch", "Observe"]

Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp", bound=Message)
T = TypeVar("T", bound="_AsyncResource")


class _AsyncResource:
    """Something ended on leaving ``async with`` (a client, session, hold or leadership)."""

    async def _exit(self) -> None:
        raise NotImplementedError

    async def __aenter__(self: T) -> T:
        return self

    async def __aexit__(
        self,
        kind: Optional[Type[BaseException]],
        value: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> None:
        try:
            await self._exit()
        except errors.HoldfastError:
            if kind is None:
                raise


class _Pending(Generic[T]):
    """A resource being obtained: await it, or enter it with ``async with``."""

    def __init__(self, obtain: Callable[[], Awaitable[T]]) -> None:
        self._obtain = obtain
        self._value: Optional[T] = None

    def __await__(self) -> Generator[Any, None, T]:
        return self._obtain().__await__()

    async def __aenter__(self) -> T:
        self._value = await self._obtain()
        return self._value

    async def __aexit__(
        self,
        kind: Optional[Type[BaseException]],
        value: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> None:
        if self._value is not None:
            await self._value.__aexit__(kind, value, traceback)


class Client(_AsyncResource):
    """A connection to a Holdfast cluster, for asyncio (see :class:`holdfast.Client`)."""

    def __init__(
        self,
        endpoints: Union[str, Sequence[str]] = _core.DEV_ENDPOINTS,
        token: Optional[str] = None,
        tls: Optional[TLS] = None,
    ) -> None:
        self._endpoints = _core.Endpoints(endpoints)
        self._metadata = _core.metadata(token)
        self._credentials = tls.credentials() if tls is not None else None
        self._channels: Dict[str, grpc.aio.Channel] = {}
        self._closed = False

    def _channel(self, index: int) -> grpc.aio.Channel:
        if self._closed:
            raise errors.HoldfastError("the client is closed")
        addr = self._endpoints.addr(index)
        channel = self._channels.get(addr)
        if channel is None:
            if self._credentials is not None:
                channel = grpc.aio.secure_channel(
                    addr, self._credentials, options=_core.CHANNEL_OPTIONS
                )
            else:
                channel = grpc.aio.insecure_channel(addr, options=_core.CHANNEL_OPTIONS)
            self._channels[addr] = channel
        return channel

    async def _call(
        self,
        method: _rpc.Method[Req, Resp],
        request: Req,
        *,
        write: bool,
        session_call: bool = False,
        deadline: Optional[float] = None,
        header: Callable[[Resp], Optional[common_pb2.ResponseHeader]] = lambda _: None,
    ) -> Resp:
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
                response: Resp = await stub(request, timeout=timeout, metadata=self._metadata)
            except grpc.RpcError as error:
                pause = attempts.failed(error)
                if pause is None:
                    raise errors.from_rpc_error(error, session_call=session_call) from None
                await asyncio.sleep(pause)
                continue
            attempts.succeeded(header(response))
            return response

    async def close(self) -> None:
        self._closed = True
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close()

    async def _exit(self) -> None:
        await self.close()

    def session(
        self,
        ttl: float = 10.0,
        principal: str = "",
        labels: Optional[Mapping[str, str]] = None,
        on_lost: Optional[Callable[[Session], None]] = None,
    ) -> _Pending[Session]:
        """Opens a session renewed by a task every TTL/3 (see :meth:`holdfast.Client.session`)."""

        async def open_session() -> Session:
            sent = time.monotonic()
            response = await self._call(
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

        return _Pending(open_session)

    async def describe(self, name: str, serializable: bool = False) -> Optional[locks_pb2.LockInfo]:
        response = await self._call(
            _rpc.DESCRIBE,
            locks_pb2.DescribeRequest(name=name, serializable=serializable),
            write=False,
        )
        return response.lock if response.HasField("lock") else None

    async def list(
        self, prefix: str = "", limit: int = 0, serializable: bool = False
    ) -> List[locks_pb2.LockInfo]:
        response = await self._call(
            _rpc.LIST,
            locks_pb2.ListRequest(prefix=prefix, limit=limit, serializable=serializable),
            write=False,
        )
        return list(response.locks)

    async def revision(self) -> int:
        response = await self._call(
            _rpc.LIST, locks_pb2.ListRequest(prefix="", limit=1), write=False
        )
        return response.header.revision

    async def check_token(self, name: str, token: int, serializable: bool = False) -> bool:
        response = await self._call(
            _rpc.CHECK_TOKEN,
            locks_pb2.CheckTokenRequest(name=name, token=token, serializable=serializable),
            write=False,
        )
        return response.current

    async def status(self) -> cluster_pb2.StatusResponse:
        return await self._call(_rpc.STATUS, cluster_pb2.StatusRequest(), write=False)

    async def leader(self, name: str, serializable: bool = False) -> Optional[Leader]:
        response = await self._call(
            _rpc.LEADER,
            elections_pb2.LeaderRequest(name=name, serializable=serializable),
            write=False,
        )
        return Leader.from_pb(response.leader) if response.HasField("leader") else None

    def observe(self, name: str) -> Observe:
        return Observe(self, name)

    async def watch(self, prefix: str = "", from_revision: int = 0) -> Watch:
        if from_revision == 0:
            from_revision = await self.revision() + 1
        return Watch(self, prefix, from_revision)


class Session(_AsyncResource):
    """An open session, renewed by a task on the loop (see :class:`holdfast.Session`)."""

    def __init__(self, client: Client, session_id: int, ttl: float, opened_at: float) -> None:
        self.client = client
        self.id = session_id
        self.ttl = ttl
        self._state = _core.SessionState[Session](session_id, ttl, opened_at)
        self._renewing = True
        self._task: Optional[asyncio.Task[None]] = None

    def _start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._keep_alive())

    @property
    def health(self) -> Health:
        return self._state.clock.health()

    @property
    def deadline(self) -> float:
        return self._state.clock.deadline()

    def on_lost(self, callback: Callable[[Session], None]) -> None:
        self._state.add_callback(callback, self)

    def pause_keepalive(self) -> None:
        self._renewing = False

    def resume_keepalive(self) -> None:
        self._renewing = True

    async def _sleep_until(self, wake: float) -> None:
        while True:
            self._state.report_health(self)
            now = time.monotonic()
            if now >= wake:
                return
            await asyncio.sleep(max(0.0, min(wake, self._state.clock.next_change(now)) - now))

    def _open_stream(self, index: int) -> Any:
        return self.client._channel(index).stream_stream(
            _rpc.KEEP_ALIVE.path,
            request_serializer=_rpc.KEEP_ALIVE.request.SerializeToString,
            response_deserializer=_rpc.KEEP_ALIVE.response.FromString,
        )(metadata=self.client._metadata)

    async def _renew(self, call: Any) -> sessions_pb2.KeepAliveResponse:
        """Sends one keepalive on ``call`` and waits for its answer, reporting health changes
        meanwhile. Raises ``grpc.RpcError`` on any failure."""
        clock = self._state.clock
        try:
            await call.write(self._state.keepalive())
        except asyncio.InvalidStateError:  # the stream already ended (its node went away)
            raise _core.StreamFailed("keepalive stream ended") from None
        read = asyncio.ensure_future(call.read())
        give_up = time.monotonic() + min(clock.period, _core.RPC_TIMEOUT)
        try:
            while True:
                now = time.monotonic()
                if now >= give_up:
                    raise _core.StreamFailed("keepalive not answered in time")
                done, _ = await asyncio.wait(
                    {read}, timeout=min(give_up, clock.next_change(now)) - now
                )
                if done:
                    break
                self._state.report_health(self)
        finally:
            if not read.done():
                read.cancel()
        answer = read.result()
        if not isinstance(answer, sessions_pb2.KeepAliveResponse):
            raise _core.StreamFailed("keepalive stream ended")
        return answer

    async def _keep_alive(self) -> None:
        call: Optional[Any] = None
        attempts = _core.Attempts(self.client._endpoints, write=True, budget=float("inf"))
        try:
            while True:
                if not self._renewing:
                    if call is not None:
                        call.cancel()
                        call = None
                    await self._sleep_until(time.monotonic() + self._state.clock.period)
                    continue
                sent = time.monotonic()
                try:
                    if call is None:
                        call = self._open_stream(attempts.index())
                    answer = await self._renew(call)
                except grpc.RpcError as error:
                    if call is not None:
                        call.cancel()
                        call = None
                    retry_at = self._state.failed(attempts, error)
                    if retry_at is None:  # the server says the session is gone
                        self._state.report_health(self)
                        return
                    wake = retry_at
                else:
                    wake = self._state.answered(attempts, sent, answer)
                await self._sleep_until(wake)
        except errors.HoldfastError:  # the client was closed under the session
            return
        finally:
            if call is not None:
                call.cancel()

    def lock(
        self,
        name: str,
        timeout: Optional[float] = 30.0,
        shared: bool = False,
        max_holders: int = 0,
        priority: int = 0,
    ) -> _Pending[Hold]:
        """See :meth:`holdfast.Session.lock`."""

        async def obtain() -> Hold:
            wait = _core.Wait(f"lock {name}", timeout)
            while True:
                grant = await self._acquire(name, wait.next_ms(), shared, max_holders, priority)
                if grant is not None:
                    return Hold(self, grant)
                wait.not_granted()

        return _Pending(obtain)

    async def try_lock(
        self, name: str, shared: bool = False, max_holders: int = 0, priority: int = 0
    ) -> Optional[Hold]:
        grant = await self._acquire(name, 0, shared, max_holders, priority)
        return Hold(self, grant) if grant is not None else None

    async def _acquire(
        self, name: str, wait_ms: int, shared: bool, max_holders: int, priority: int
    ) -> Optional[_core.Grant]:
        try:
            response = await self.client._call(
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

    async def _release(self, name: str, token: int) -> int:
        response = await self.client._call(
            _rpc.RELEASE,
            self._state.release(name, token),
            write=True,
            session_call=True,
            header=lambda r: r.header,
        )
        return response.released_at

    def campaign(
        self,
        name: str,
        value: bytes = b"",
        timeout: Optional[float] = None,
        priority: int = 0,
    ) -> _Pending[Leadership]:
        """See :meth:`holdfast.Session.campaign`."""

        async def obtain() -> Leadership:
            wait = _core.Wait(f"leadership of {name}", timeout)
            while True:
                wait_ms = wait.next_ms()
                try:
                    response = await self.client._call(
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

        return _Pending(obtain)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        try:
            await self.client._call(
                _rpc.CLOSE,
                self._state.close(),
                write=True,
                session_call=True,
                header=lambda r: r.header,
            )
        except errors.SessionLost:
            pass

    async def _exit(self) -> None:
        await self.close()


class Hold(_core.HoldState, _AsyncResource):
    """A granted lock (see :class:`holdfast.Hold`)."""

    def __init__(self, session: Session, grant: _core.Grant) -> None:
        super().__init__(grant)
        self.session = session

    async def is_current(self, serializable: bool = False) -> bool:
        return await self.session.client.check_token(self.name, self.token, serializable)

    async def release(self) -> int:
        if self.released_at is None:
            self.released_at = await self.session._release(self.name, self.token)
        return self.released_at

    async def _exit(self) -> None:
        await self.release()


class Leadership(_core.LeadershipState, _AsyncResource):
    """This session leads an election (see :class:`holdfast.Leadership`)."""

    def __init__(
        self, session: Session, key: elections_pb2.LeaderKey, value: bytes, revision: int
    ) -> None:
        super().__init__(key, value, revision)
        self.session = session

    async def proclaim(self, value: bytes) -> None:
        await self.session.client._call(
            _rpc.PROCLAIM,
            self.proclaim_request(value),
            write=True,
            session_call=True,
            header=lambda r: r.header,
        )
        self.value = value

    async def is_current(self, serializable: bool = False) -> bool:
        return await self.session.client.check_token(self.name, self.token, serializable)

    async def resign(self) -> None:
        if not self.resigned:
            await self.session.client._call(
                _rpc.RESIGN,
                self.session._state.resign(self.key),
                write=True,
                session_call=True,
                header=lambda r: r.header,
            )
            self.resigned = True

    async def _exit(self) -> None:
        await self.resign()


class _Stream:
    """A server stream that reconnects on retryable failures (see the blocking client's)."""

    def __init__(self, client: Client, method: _rpc.Method[Req, Resp]) -> None:
        self._client = client
        self._method: _rpc.Method[Any, Any] = method
        self._closed = False
        self._attempts = _core.Attempts(client._endpoints, write=False)
        self._call: Optional[Any] = None

    def _request(self) -> Message:
        raise NotImplementedError

    def _open(self) -> Any:
        return self._client._channel(self._attempts.index()).unary_stream(
            self._method.path,
            request_serializer=self._method.request.SerializeToString,
            response_deserializer=self._method.response.FromString,
        )(self._request(), metadata=self._client._metadata)

    async def _next_message(self) -> Optional[Message]:
        while not self._closed:
            if self._call is None:
                self._call = self._open()
            try:
                message = await self._call.read()
            except asyncio.CancelledError:
                if self._closed:  # close() cancelled the call (not a cancellation of our task)
                    return None
                raise
            except grpc.RpcError as error:
                self._call = None
                if self._closed:
                    return None
                pause = _core.stream_failed(self._attempts, error)
            else:
                if isinstance(message, Message):
                    self._attempts = _core.Attempts(self._client._endpoints, write=False)
                    return message
                self._call = None  # grpc.aio.EOF: the node ended the stream
                pause = _core.stream_ended(self._attempts)
            await asyncio.sleep(pause)
        return None

    def close(self) -> None:
        self._closed = True
        if self._call is not None:
            self._call.cancel()


class Watch(_Stream):
    """Async iterator of :class:`Event` (see :meth:`holdfast.Client.watch`)."""

    def __init__(self, client: Client, prefix: str, from_revision: int) -> None:
        super().__init__(client, _rpc.WATCH)
        self.prefix = prefix
        self._cursor = _core.WatchCursor(from_revision)
        self._pending: List[Event] = []
        self._call = self._open()

    @property
    def next_revision(self) -> int:
        return self._cursor.next_revision

    def _request(self) -> Message:
        return watch_pb2.WatchRequest(prefix=self.prefix, from_revision=self.next_revision)

    def __aiter__(self) -> AsyncIterator[Event]:
        return self

    async def __anext__(self) -> Event:
        while not self._pending:
            message = await self._next_message()
            if message is None:
                raise StopAsyncIteration
            assert isinstance(message, watch_pb2.WatchResponse)
            self._pending = self._cursor.accept(message)
        return self._pending.pop(0)


class Observe(_Stream):
    """Async iterator of :class:`Observation` (see :meth:`holdfast.Client.observe`)."""

    def __init__(self, client: Client, name: str) -> None:
        super().__init__(client, _rpc.OBSERVE)
        self.name = name
        self._cursor = _core.ObserveCursor()
        self._call = self._open()

    def _request(self) -> Message:
        return elections_pb2.ObserveRequest(name=self.name)

    def __aiter__(self) -> AsyncIterator[Observation]:
        return self

    async def __anext__(self) -> Observation:
        while True:
            message = await self._next_message()
            if message is None:
                raise StopAsyncIteration
            assert isinstance(message, elections_pb2.ObserveResponse)
            observation = self._cursor.accept(message)
            if observation is not None:
                return observation
