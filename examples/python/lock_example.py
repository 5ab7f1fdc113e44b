"""Holdfast from Python: open a session, take a lock, print its fencing token, release it.

The gRPC stubs are generated from the repository's proto/ files with grpcio-tools:

    python -m grpc_tools.protoc -I proto --python_out=OUT --grpc_python_out=OUT \
        proto/holdfast/v1/*.proto
    PYTHONPATH=OUT python examples/python/lock_example.py --endpoint 127.0.0.1:7701

(`scripts/test` does exactly this against a live test cluster.)
"""

import argparse
import sys

import grpc

from holdfast.v1 import locks_pb2, locks_pb2_grpc, sessions_pb2, sessions_pb2_grpc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint", default="127.0.0.1:7701", help="any Holdfast node")
    parser.add_argument("--lock", default="python/example", help="lock name")
    args = parser.parse_args()

    with grpc.insecure_channel(args.endpoint) as channel:
        sessions = sessions_pb2_grpc.SessionsStub(channel)
        locks = locks_pb2_grpc.LocksStub(channel)

        opened = sessions.Open(sessions_pb2.OpenSessionRequest(ttl_ms=10_000, principal="python"), timeout=10)
        session_id = opened.session_id
        acquired = locks.Acquire(
            locks_pb2.AcquireRequest(session_id=session_id, request_id=1, name=args.lock, wait_timeout_ms=5_000),
            timeout=15,
        )
        if acquired.status != locks_pb2.ACQUIRE_STATUS_ACQUIRED:
            print(f"lock {args.lock} not granted (status {acquired.status})", file=sys.stderr)
            return 1
        print(f"session {session_id} holds {args.lock} with fencing token {acquired.token}")

        checked = locks.CheckToken(locks_pb2.CheckTokenRequest(name=args.lock, token=acquired.token), timeout=10)
        assert checked.current, "the token must be current while held"
        locks.Release(
            locks_pb2.ReleaseRequest(session_id=session_id, request_id=2, name=args.lock, token=acquired.token),
            timeout=10,
        )
        checked = locks.CheckToken(locks_pb2.CheckTokenRequest(name=args.lock, token=acquired.token), timeout=10)
        assert not checked.current, "the token must be stale after release"
        sessions.Close(sessions_pb2.CloseSessionRequest(session_id=session_id), timeout=10)
        print("released; token is now stale")
    return 0


if __name__ == "__main__":
    sys.exit(main())
