"""Locks from Python against a real 3-node cluster: mutual exclusion across processes, fencing
tokens, the documented failures as their own exceptions."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import List

import pytest

import holdfast
from conftest import Cluster, policy_wasm, wait_for

WORKER = Path(__file__).with_name("increment_worker.py")


def test_eight_processes_increment_a_file_under_the_lock(cluster: Cluster, tmp_path: Path) -> None:
    counter, tokens = tmp_path / "counter", tmp_path / "tokens"
    counter.write_text("0")
    workers, rounds = 8, 10
    processes = []
    try:
        for worker in range(workers):
            # Spread the workers' first endpoints over the nodes.
            endpoints = cluster.endpoints(first=worker % 3 + 1)
            processes.append(
                subprocess.Popen(
                    [sys.executable, str(WORKER), ",".join(endpoints), str(counter), str(tokens)]
                    + [str(rounds)],
                    env={**os.environ, "PYTHONPATH": str(Path(__file__).parent)},
                )
            )
        for process in processes:
            assert process.wait(timeout=180) == 0, "a worker failed"
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    # Every increment survived: nobody read the counter while another held the lock.
    assert counter.read_text() == str(workers * rounds)
    # Grants in the order they happened carry strictly increasing fencing tokens.
    written = [int(line) for line in tokens.read_text().split()]
    assert len(written) == workers * rounds
    assert written == sorted(written) and len(set(written)) == len(written), written


def test_a_released_or_taken_over_token_is_stale(client: holdfast.Client) -> None:
    with client.session(ttl=10.0) as first, client.session(ttl=10.0) as second:
        with first.lock("py/fence") as hold:
            assert hold.is_current() and hold.token > 0 and hold.lease is None
            assert second.try_lock("py/fence") is None
        assert not hold.is_current(), "released: the token is stale"
        with second.lock("py/fence", timeout=5.0) as later:
            assert later.token > hold.token
            assert not client.check_token("py/fence", hold.token)
            assert later.is_current()


def test_documented_failures_raise_their_own_exceptions(client: holdfast.Client) -> None:
    with client.session(ttl=10.0) as holder, client.session(ttl=10.0) as other:
        with pytest.raises(holdfast.InvalidArgument) as invalid:
            holder.try_lock("x" * 600)
        assert invalid.value.field == "name", invalid.value
        with pytest.raises(holdfast.InvalidArgument) as invalid:
            client.session(ttl=0.5)
        assert invalid.value.field == "ttl_ms", invalid.value

        hold = holder.lock("py/busy")
        started = time.monotonic()
        with pytest.raises(holdfast.LockTimeout):
            other.lock("py/busy", timeout=0.5)
        assert 0.4 < time.monotonic() - started < 5.0
        # The timed-out wait left no queue entry behind.
        info = client.describe("py/busy")
        assert info is not None and [h.token for h in info.holders] == [hold.token]
        assert list(info.waiters) == []

        with pytest.raises(holdfast.StaleToken):
            other._release("py/busy", hold.token)
        shared = holder.try_lock("py/shared", shared=True, max_holders=2)
        assert shared is not None
        with pytest.raises(holdfast.FailedPrecondition) as conflict:
            other.try_lock("py/shared", shared=True, max_holders=3)
        assert not isinstance(conflict.value, holdfast.StaleToken), conflict.value
        hold.release()
        hold.release()  # twice: a no-op

    with holdfast.Client(client._endpoints.addrs()) as stranger:
        with pytest.raises(holdfast.SessionLost):
            holdfast.Session(stranger, 999_999_999, 10.0, time.monotonic()).try_lock("py/x")


def test_a_policy_denial_carries_the_policy_and_its_reason(
    cluster: Cluster, client: holdfast.Client
) -> None:
    deployed = cluster.cli("policy", "deploy", str(policy_wasm("tenant_quota")), "--name", "quota")
    assert deployed.returncode == 0, deployed.stderr
    bound = cluster.cli("policy", "bind", "t/", "quota")
    assert bound.returncode == 0, bound.stderr

    with client.session(ttl=10.0) as anonymous:
        with pytest.raises(holdfast.PolicyDenied) as denied:
            anonymous.lock("t/report")
    assert "tenant" in denied.value.reason, denied.value.reason
    assert (denied.value.policy, denied.value.prefix) == ("quota", "t/")
    assert denied.value.version >= 1
    assert isinstance(denied.value, holdfast.PermissionDenied)

    with client.session(ttl=10.0, labels={"tenant": "acme"}) as tenant:
        with tenant.lock("t/report") as hold:
            assert hold.is_current()


def test_lock_delay_is_its_own_exception(cluster: Cluster, client: holdfast.Client) -> None:
    rules = cluster.dir / "rules.conf"
    rules.write_text("lock_delay_ms = 20000\n")
    deployed = cluster.cli("policy", "deploy", str(policy_wasm("lease_rules")), "--name", "rules")
    assert deployed.returncode == 0, deployed.stderr
    bound = cluster.cli("policy", "bind", "d/", "rules", "--config", str(rules))
    assert bound.returncode == 0, bound.stderr

    doomed = client.session(ttl=2.0)
    hold = doomed.lock("d/x")
    doomed.pause_keepalive()

    def delayed() -> bool:
        info = client.describe("d/x")
        return info is not None and not info.holders and info.delayed_until_ms > 0

    wait_for("the holder's session to expire", delayed, timeout=15.0)
    with client.session(ttl=10.0) as next_session:
        with pytest.raises(holdfast.LockDelayed) as raised:
            next_session.try_lock("d/x")
        assert 0 < raised.value.retry_after <= 20.0
        assert isinstance(raised.value, holdfast.LockTimeout)
    assert not hold.is_current()


def test_paused_keepalive_is_lost_before_the_server_expires_the_session(
    client: holdfast.Client,
) -> None:
    holder = client.session(ttl=3.0)
    waiter = client.session(ttl=10.0)
    try:
        hold = holder.lock("py/handoff")
        lost_at: List[float] = []
        still_held_when_lost: List[bool] = []

        def on_lost(session: holdfast.Session) -> None:
            lost_at.append(time.monotonic())
            # The client must say LOST while the server still has the session: its locks are
            # still held, so nobody else can have them yet.
            still_held_when_lost.append(client.check_token("py/handoff", hold.token))

        holder.on_lost(on_lost)
        granted: List[holdfast.Hold] = []
        granted_at: List[float] = []

        def wait() -> None:
            granted.append(waiter.lock("py/handoff", timeout=30.0))
            granted_at.append(time.monotonic())

        thread = threading.Thread(target=wait)
        thread.start()
        wait_for(
            "the waiter to queue",
            lambda: (client.describe("py/handoff") or holdfast.v1.locks_pb2.LockInfo()).waiters,
        )
        assert holder.health.name == "HEALTHY"
        holder.pause_keepalive()
        wait_for("AT_RISK", lambda: holder.health is holdfast.Health.AT_RISK, timeout=5.0)
        thread.join(timeout=30.0)
        assert granted, "the waiter was never granted the lock"
        assert lost_at and still_held_when_lost == [True]
        assert lost_at[0] < granted_at[0]
        assert holder.health is holdfast.Health.LOST
        assert granted[0].token > hold.token
        assert not hold.is_current()
        with pytest.raises(holdfast.SessionLost):
            hold.release()
    finally:
        waiter.close()
        holder.close()
