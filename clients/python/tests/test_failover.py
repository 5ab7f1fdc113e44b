"""Node failures under a live client: a session's node killed, a watch's node killed, an
election's leader gone."""

from __future__ import annotations

import threading
import time
from typing import Callable, Iterator, List, Optional

import pytest

import holdfast
from conftest import Cluster, wait_for


def node_of(cluster: Cluster, addr: str) -> int:
    return next(node for node, a in cluster.addrs.items() if a == addr)


def test_session_and_hold_survive_kill_of_the_node_the_session_talks_to(
    cluster: Cluster, client: holdfast.Client
) -> None:
    lost: List[holdfast.Session] = []
    with client.session(ttl=6.0, on_lost=lost.append) as session:
        hold = session.lock("py/survivor")
        # The keepalive stream and every write go to the leader the answers named.
        talks_to = node_of(cluster, client._endpoints.addr(client._endpoints.start(write=True)))
        assert talks_to == cluster.leader()
        cluster.kill(talks_to)
        new_leader = cluster.wait_leader()
        assert new_leader != talks_to
        # Two renewal periods later the session has been renewed through the new leader.
        time.sleep(2 * session.ttl / 3)
        assert session.health is holdfast.Health.HEALTHY, session.deadline - time.monotonic()
        assert hold.is_current()
        with client.session(ttl=6.0) as other:
            assert other.try_lock("py/survivor") is None
        hold.release()
        assert not hold.is_current()
    assert lost == []


def take(
    events: Iterator[holdfast.Event], count: int, timeout: float = 30.0
) -> List[holdfast.Event]:
    """The next ``count`` events, read by a helper thread so that a missing event fails the
    test instead of hanging it."""
    taken: List[holdfast.Event] = []
    failure: List[BaseException] = []

    def read() -> None:
        try:
            for _ in range(count):
                taken.append(next(events))
        except BaseException as error:
            failure.append(error)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    assert not failure, failure
    assert len(taken) == count, f"{len(taken)} of {count} events within {timeout} s: {taken}"
    return taken


def test_watch_resumes_across_a_kill_of_its_node(cluster: Cluster) -> None:
    leader = cluster.leader()
    follower = next(node for node in sorted(cluster.addrs) if node != leader)
    with (
        holdfast.Client(cluster.endpoints(first=follower)) as watcher,
        holdfast.Client(cluster.endpoints(first=leader)) as writer,
        writer.session(ttl=10.0) as session,
    ):
        watch = watcher.watch("py/w/")  # served by `follower`
        tokens = []
        for index in range(5):
            with session.lock(f"py/w/{index}") as hold:
                tokens.append(hold.token)
        events = take(watch, 10)
        # The watch's node dies while nobody reads; the next changes happen before the watch
        # reconnects, so only resuming from the last revision delivered can show them.
        cluster.kill(follower)
        for index in range(5, 10):
            with session.lock(f"py/w/{index}") as hold:
                tokens.append(hold.token)
        events += take(watch, 10)
        watch.close()
    acquired = [event.token for event in events if event.kind == "ACQUIRED"]
    assert acquired == tokens, "every grant once, in order, across the kill"
    assert [event.lock for event in events if event.kind == "ACQUIRED"] == [
        f"py/w/{index}" for index in range(10)
    ]
    revisions = [event.revision for event in events]
    assert revisions == sorted(revisions) and len(set(revisions)) == 20, revisions
    assert all(event.reason == "RELEASED" for event in events if event.kind == "RELEASED")
    assert [event.kind for event in events] == ["ACQUIRED", "RELEASED"] * 10


def test_election_fails_over_to_the_next_candidate(
    cluster: Cluster, client: holdfast.Client
) -> None:
    observed: List[holdfast.Observation] = []
    observe = client.observe("py/leader")
    observer = threading.Thread(target=lambda: observed.extend(observe), daemon=True)
    observer.start()
    first = client.session(ttl=3.0, principal="first")
    second = client.session(ttl=10.0, principal="second")
    try:
        leading = first.campaign("py/leader", value=b"first")
        assert leading.is_current()
        leader = client.leader("py/leader")
        assert leader is not None and (leader.session_id, leader.value) == (first.id, b"first")
        leading.proclaim(b"first, again")
        elected: List[holdfast.Leadership] = []
        candidate = threading.Thread(
            target=lambda: elected.append(second.campaign("py/leader", b"second", timeout=30.0))
        )
        candidate.start()
        wait_for(
            "the second candidate to queue",
            lambda: (client.describe("py/leader") or holdfast.v1.locks_pb2.LockInfo()).waiters,
        )
        # The leader's process hangs: its session expires and the candidate takes over.
        first.pause_keepalive()
        candidate.join(timeout=30.0)
        assert elected, "the second candidate was never elected"
        assert elected[0].token > leading.token
        assert not leading.is_current()
        now: Optional[holdfast.Leader] = client.leader("py/leader")
        assert now is not None and now.value == b"second" and now.session_id == second.id

        def seen_second() -> bool:
            return any(o.leader is not None and o.leader.value == b"second" for o in observed)

        wait_for("the observer to see the second leader", seen_second)
        # Nobody, then the first leader and its proclamation, then (after a moment with no
        # leader, perhaps) the second.
        values = [o.leader.value for o in observed if o.leader is not None]
        assert values == [b"first", b"first, again", b"second"], observed
        elected[0].resign()
        wait_for("no leader", lambda: client.leader("py/leader") is None)
    finally:
        observe.close()
        second.close()
        first.close()


def test_a_watch_from_a_compacted_revision_says_so(
    cluster_factory: Callable[..., Cluster],
) -> None:
    cluster = cluster_factory(3, ["--snapshot-every-entries=20", "--snapshot-keep-entries=5"])
    with holdfast.Client(cluster.endpoints()) as client, client.session(ttl=10.0) as session:
        for _ in range(30):
            session.lock("py/compact").release()
        revision = client.revision()
        node = 1
        cluster.kill(node)
        cluster.start(node)

        def caught_up() -> bool:
            status = cluster.status(node)
            return status is not None and status.applied_index >= revision

        wait_for("the restarted node to catch up", caught_up)
    # The restarted node keeps history only from its snapshot on.
    with holdfast.Client([cluster.addrs[node]]) as client:
        with pytest.raises(holdfast.Compacted) as compacted:
            next(client.watch("py/", from_revision=1))
        # (Later than `revision` is possible: the log kept growing while the node restarted.)
        oldest = compacted.value.compacted_revision
        assert oldest > 1, oldest
        with client.session(ttl=10.0) as session:
            token = session.lock("py/compact").release()
        # From the oldest revision it still has, the watch works.
        with client.watch("py/", from_revision=oldest) as watch:
            events = take(watch, 2)
        assert all(event.revision >= oldest for event in events), events
        assert token > 0
