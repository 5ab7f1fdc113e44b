"""Holdfast from Python: open a session, take a lock, print its fencing token, release it.

    pip install ./clients/python
    python examples/python/lock_example.py --endpoint 127.0.0.1:7701

(`scripts/test` runs it against a live test cluster.) The client (clients/python) renews the
session in the background, sends writes to the leader, retries across nodes, and raises
holdfast.LockTimeout, holdfast.PolicyDenied, holdfast.SessionLost… for the documented failures.
"""

import argparse

import holdfast


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint", action="append", help="a Holdfast node (repeatable)")
    parser.add_argument("--lock", default="python/example", help="lock name")
    args = parser.parse_args()

    with holdfast.Client(args.endpoint or holdfast.DEV_ENDPOINTS) as client:
        with client.session(ttl=10.0, principal="python") as session:
            with session.lock(args.lock, timeout=5.0) as hold:
                print(f"session {session.id} holds {args.lock} with fencing token {hold.token}")
                assert hold.is_current(), "the token is current while held"
            assert not hold.is_current(), "the token is stale after release"
            print("released; token is now stale")


if __name__ == "__main__":
    main()
