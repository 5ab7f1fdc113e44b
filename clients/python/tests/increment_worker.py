"""One of the mutual-exclusion test's processes: increments a counter file ROUNDS times under
the lock `py/counter`, appending each grant's fencing token to TOKENS while holding it.

    python increment_worker.py ENDPOINTS COUNTER TOKENS ROUNDS
"""

from __future__ import annotations

import sys
import time

import holdfast


def main(endpoints: str, counter: str, tokens: str, rounds: int) -> None:
    with holdfast.Client(endpoints.split(",")) as client:
        with client.session(ttl=10.0, principal="increment-worker") as session:
            for _ in range(rounds):
                with session.lock("py/counter", timeout=120.0) as hold:
                    with open(counter) as file:
                        value = int(file.read())
                    time.sleep(0.002)  # widen the window a second holder would need
                    with open(counter, "w") as file:
                        file.write(str(value + 1))
                    with open(tokens, "a") as file:
                        file.write(f"{hold.token}\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
