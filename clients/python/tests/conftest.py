"""Real clusters for the client's tests: `holdfast serve` processes on 127.0.0.1 with free
ports and data in a temp dir, killed by pid when the test ends (and, through
`setpriv --pdeathsig KILL`, when the test process dies). No `preexec_fn`: forking a process
whose gRPC threads are running breaks the child; setpriv lets subprocess use vfork.

The binary is `$HOLDFAST_BIN` (scripts/test sets it), else the debug build in
`$CARGO_TARGET_DIR` (default ~/.cache/holdfast/target).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, TypeVar

# The fixtures fork and exec processes (`holdfast serve`, the CLI, workers) while gRPC threads
# run. Python 3.9's subprocess forks (3.10+ uses vfork), and gRPC's fork handlers then abort
# the child before its exec; it needs none, so none are installed. Before grpc is imported.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import grpc  # noqa: E402
import pytest  # noqa: E402

import holdfast
from holdfast import _rpc
from holdfast.v1 import cluster_pb2

HEARTBEAT_MS = 50
ELECTION_TIMEOUT_MIN_MS = 300
ELECTION_TIMEOUT_MAX_MS = 600
#: How long a cluster may take to agree on a leader.
CONVERGE_TIMEOUT = 30.0

T = TypeVar("T")


def target_dir() -> Path:
    return Path(os.environ.get("CARGO_TARGET_DIR", Path.home() / ".cache/holdfast/target"))


def holdfast_bin() -> Path:
    configured = os.environ.get("HOLDFAST_BIN")
    path = Path(configured) if configured else target_dir() / "debug" / "holdfast"
    if not path.is_file():
        raise RuntimeError(f"{path} not found: build it first (scripts/test does)")
    return path


def policy_wasm(name: str) -> Path:
    """An example policy built by scripts/build-policies."""
    path = target_dir() / "wasm32v1-none" / "release" / f"holdfast_policy_{name}.wasm"
    if not path.is_file():
        raise RuntimeError(f"{path} not found: run scripts/build-policies first")
    return path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


#: Runs a command with SIGKILL as its parent-death signal (util-linux, in the base image).
DIE_WITH_PARENT = ["setpriv", "--pdeathsig", "KILL", "--"]


def wait_for(what: str, check: Callable[[], Optional[T]], timeout: float = 20.0) -> T:
    """Polls ``check`` every 50 ms until it returns something other than None/False."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


class Cluster:
    """N nodes of `holdfast serve` with their processes, addresses and logs."""

    def __init__(
        self,
        directory: Path,
        size: int,
        extra_args: List[str],
        tls: bool = False,
        token: Optional[str] = None,
    ) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.bin = holdfast_bin()
        self.addrs: Dict[int, str] = {
            node: f"127.0.0.1:{free_port()}" for node in range(1, size + 1)
        }
        self.extra_args = extra_args
        #: The token the fixture's own calls (Status) send, for nodes with a token file.
        self.token = token
        #: With `tls`, `holdfast certs` made a CA, node certificates and client certificates
        #: `harness` and `alice` in `certs/`; nodes serve TLS only.
        self.tls: Optional[holdfast.TLS] = None
        if tls:
            certs = self.dir / "certs"
            made = subprocess.run(
                [str(self.bin), "certs", f"--out={certs}", "--client=harness", "--client=alice"]
                + [f"--node={node}=127.0.0.1" for node in self.addrs],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert made.returncode == 0, made.stderr
            self.tls = holdfast.TLS(
                ca=str(certs / "ca.pem"),
                cert=str(certs / "client-harness.pem"),
                key=str(certs / "client-harness.key"),
            )
        self.processes: Dict[int, subprocess.Popen[bytes]] = {}
        for node in self.addrs:
            self.start(node)

    def endpoints(self, first: Optional[int] = None) -> List[str]:
        """Every node's address, ``first``'s first."""
        order = sorted(self.addrs, key=lambda node: (node != first, node))
        return [self.addrs[node] for node in order]

    def log(self, node: int) -> Path:
        return self.dir / f"node-{node}.log"

    def start(self, node: int) -> None:
        assert node not in self.processes, f"node {node} is running"
        peers = [f"--peer={peer}={addr}" for peer, addr in self.addrs.items()]
        tls = []
        if self.tls is not None:
            certs = self.dir / "certs"
            tls = [
                f"--tls-cert={certs / f'node-{node}.pem'}",
                f"--tls-key={certs / f'node-{node}.key'}",
                f"--tls-ca={certs / 'ca.pem'}",
            ]
        with open(self.log(node), "ab") as log:
            self.processes[node] = subprocess.Popen(
                [
                    *DIE_WITH_PARENT,
                    str(self.bin),
                    *tls,
                    "serve",
                    f"--id={node}",
                    f"--listen={self.addrs[node]}",
                    f"--data-dir={self.dir / f'node-{node}'}",
                    f"--heartbeat-ms={HEARTBEAT_MS}",
                    f"--election-timeout-min-ms={ELECTION_TIMEOUT_MIN_MS}",
                    f"--election-timeout-max-ms={ELECTION_TIMEOUT_MAX_MS}",
                    *peers,
                    *self.extra_args,
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env={**os.environ, "RUST_LOG": "info,openraft=warn"},
            )

    def kill(self, node: int) -> None:
        """kill -9 of one node, by pid, reaped."""
        process = self.processes.pop(node)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)

    def stop_all(self) -> None:
        for node in list(self.processes):
            self.kill(node)

    def status(self, node: int) -> Optional[cluster_pb2.StatusResponse]:
        """One node's Status, or None if it does not answer within a second."""
        addr = self.addrs[node]
        if self.tls is not None:
            channel = grpc.secure_channel(addr, self.tls.credentials())
        else:
            channel = grpc.insecure_channel(addr)
        with channel:
            call = channel.unary_unary(
                _rpc.STATUS.path,
                request_serializer=cluster_pb2.StatusRequest.SerializeToString,
                response_deserializer=cluster_pb2.StatusResponse.FromString,
            )
            metadata = holdfast._core.metadata(self.token)
            try:
                status: cluster_pb2.StatusResponse = call(
                    cluster_pb2.StatusRequest(), timeout=1.0, metadata=metadata
                )
                return status
            except grpc.RpcError:
                return None

    def leader(self, among: Optional[List[int]] = None) -> Optional[int]:
        """The leader every running node (or every node in ``among``) agrees on."""
        nodes = among if among is not None else sorted(self.processes)
        leaders = set()
        for node in nodes:
            status = self.status(node)
            leaders.add(status.leader_id if status is not None else 0)
        leader = leaders.pop() if len(leaders) == 1 else 0
        return leader if leader in nodes else None

    def wait_leader(self, among: Optional[List[int]] = None) -> int:
        try:
            return wait_for("an agreed leader", lambda: self.leader(among), CONVERGE_TIMEOUT)
        except AssertionError:
            raise AssertionError(f"no leader; logs in {self.dir}:\n{self.logs_tail()}") from None

    def logs_tail(self, lines: int = 20) -> str:
        text = []
        for node in self.addrs:
            content = self.log(node).read_text(errors="replace").splitlines()[-lines:]
            text.append(f"--- node {node} ---\n" + "\n".join(content))
        return "\n".join(text)

    def cli(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Runs `holdfast ARGS` against this cluster."""
        return subprocess.run(
            [*DIE_WITH_PARENT, str(self.bin), "--endpoints", ",".join(self.endpoints()), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )


@pytest.fixture
def cluster_factory(tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    clusters: List[Cluster] = []

    def start(
        size: int = 3,
        extra_args: Optional[List[str]] = None,
        tls: bool = False,
        token: Optional[str] = None,
    ) -> Cluster:
        directory = tmp_path / f"cluster-{len(clusters)}"
        cluster = Cluster(directory, size, extra_args or [], tls=tls, token=token)
        clusters.append(cluster)
        cluster.wait_leader()
        return cluster

    try:
        yield start
    finally:
        for cluster in clusters:
            cluster.stop_all()


@pytest.fixture
def cluster(cluster_factory: Callable[..., Cluster]) -> Cluster:
    """A 3-node cluster (admin calls allowed, for policy deploys)."""
    return cluster_factory(3, ["--allow-admin"])


@pytest.fixture
def client(cluster: Cluster) -> Iterator[holdfast.Client]:
    with holdfast.Client(cluster.endpoints()) as client:
        yield client
