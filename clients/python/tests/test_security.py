"""Bearer tokens and TLS: the client authenticates the way the nodes require."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

import holdfast
from conftest import Cluster

ALICE = "alice-token-0123456789"
READER = "reader-token-012345678"
PEER = "peer-token-0123456789ab"


def test_a_token_authenticates_and_its_role_decides(
    cluster_factory: Callable[..., Cluster], tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(
        "".join(
            f'[[token]]\ntoken = "{token}"\nprincipal = "{principal}"\nroles = ["{role}"]\n\n'
            for token, principal, role in [
                (ALICE, "alice", "client"),
                (READER, "dashboard", "read"),
                (PEER, "cluster", "peer"),
            ]
        )
    )
    cluster = cluster_factory(3, [f"--token-file={tokens}"], token=READER)
    with holdfast.Client(cluster.endpoints(), token=ALICE) as alice:
        with alice.session(ttl=10.0) as session, session.lock("sec/a") as hold:
            assert hold.is_current()
    with holdfast.Client(cluster.endpoints()) as anonymous:
        with pytest.raises(holdfast.Unauthenticated):
            anonymous.session(ttl=10.0)
    with holdfast.Client(cluster.endpoints(), token=READER) as reader:
        assert reader.describe("sec/a") is None
        with pytest.raises(holdfast.PermissionDenied):
            reader.session(ttl=10.0)
    with pytest.raises(ValueError):
        holdfast.Client(cluster.endpoints(), token="bad\ntoken")


def test_tls_with_a_client_certificate(cluster_factory: Callable[..., Cluster]) -> None:
    cluster = cluster_factory(3, tls=True)
    certs = cluster.dir / "certs"
    tls = holdfast.TLS(
        ca=(certs / "ca.pem").read_bytes(),
        cert=(certs / "client-alice.pem").read_bytes(),
        key=(certs / "client-alice.key").read_bytes(),
    )
    with holdfast.Client(cluster.endpoints(), tls=tls) as client:
        with client.session(ttl=10.0) as session, session.lock("sec/tls") as hold:
            assert hold.is_current() and hold.token > 0
