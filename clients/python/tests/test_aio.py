"""holdfast.aio against a real cluster: the same API on asyncio."""

from __future__ import annotations

import asyncio
import time
from typing import List, Optional

import pytest

import holdfast
import holdfast.aio
from conftest import Cluster


def run(coroutine: "asyncio.Future[None] | object") -> None:
    asyncio.run(asyncio.wait_for(coroutine, timeout=120))  # type: ignore[arg-type]


def test_locks_sessions_and_watch(cluster: Cluster) -> None:
    async def scenario() -> None:
        async with holdfast.aio.Client(cluster.endpoints()) as client:
            watch = await client.watch("aio/")
            async with client.session(ttl=10.0, principal="aio") as session:
                async with session.lock("aio/a") as hold:
                    assert await hold.is_current()
                    other = await client.session(ttl=10.0)
                    assert await other.try_lock("aio/a") is None
                    with pytest.raises(holdfast.LockTimeout):
                        await other.lock("aio/a", timeout=0.3)
                    await other.close()
                assert not await hold.is_current()
                with pytest.raises(holdfast.InvalidArgument) as invalid:
                    await session.try_lock("")
                assert invalid.value.field == "name"
            kinds = []
            async for event in watch:
                kinds.append((event.kind, event.reason, event.token))
                if event.kind == "RELEASED":
                    break
            watch.close()
            assert kinds == [
                ("ACQUIRED", "NONE", hold.token),
                ("QUEUED", "NONE", 0),
                ("LEFT_QUEUE", "TIMED_OUT", 0),
                ("RELEASED", "RELEASED", hold.token),
            ]

    run(scenario())


def test_paused_keepalive_turns_lost_and_the_lock_moves_on(cluster: Cluster) -> None:
    async def scenario() -> None:
        async with holdfast.aio.Client(cluster.endpoints()) as client:
            lost_at: List[float] = []
            holder = await client.session(
                ttl=2.0, on_lost=lambda s: lost_at.append(time.monotonic())
            )
            waiter = await client.session(ttl=10.0)
            hold = await holder.lock("aio/handoff")
            waiting = asyncio.ensure_future(waiter.lock("aio/handoff", timeout=30.0))
            await asyncio.sleep(0.5)
            assert holder.health.name == "HEALTHY"
            holder.pause_keepalive()
            granted = await waiting
            granted_at = time.monotonic()
            assert lost_at and lost_at[0] < granted_at
            assert holder.health is holdfast.Health.LOST
            assert granted.token > hold.token
            await granted.release()
            await waiter.close()
            await holder.close()  # already expired: not an error

    run(scenario())


def test_elections_and_a_leader_kill(cluster: Cluster) -> None:
    async def scenario() -> None:
        async with holdfast.aio.Client(cluster.endpoints()) as client:
            observe = client.observe("aio/leader")
            values: List[Optional[bytes]] = []

            async def collect() -> None:
                async for observation in observe:
                    values.append(observation.leader.value if observation.leader else None)

            async def seen(value: Optional[bytes]) -> None:
                while not values or values[-1] != value:
                    await asyncio.sleep(0.05)

            observing = asyncio.ensure_future(collect())
            async with client.session(ttl=6.0) as session:
                async with session.campaign("aio/leader", b"one") as leadership:
                    await leadership.proclaim(b"two")
                    leader = await client.leader("aio/leader")
                    assert leader is not None and leader.value == b"two"
                    await asyncio.wait_for(seen(b"two"), 10)
                    # Kill the cluster's leader: the session and its leadership survive.
                    killed = cluster.leader()
                    assert killed is not None
                    cluster.kill(killed)
                    await asyncio.sleep(2 * session.ttl / 3 + 1.0)
                    assert session.health is holdfast.Health.HEALTHY
                    assert await leadership.is_current()
                assert await client.leader("aio/leader") is None
            # The observer, reconnected if its node was the one killed, sees the resignation.
            await asyncio.wait_for(seen(None), 10)
            observe.close()
            await observing
            assert values == [None, b"one", b"two", None], values

    run(scenario())
