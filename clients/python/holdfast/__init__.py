"""Holdfast's Python client.

::

    import holdfast

    client = holdfast.Client(["127.0.0.1:7701", "127.0.0.1:7702", "127.0.0.1:7703"])
    with client.session(ttl=10.0, principal="billing") as session:
        with session.lock("reports/nightly", timeout=30.0) as hold:
            write_report(fencing_token=hold.token)

The blocking API is here; :mod:`holdfast.aio` has the same on asyncio. Failures raise the
exceptions of :mod:`holdfast.errors`; the generated protobuf modules are :mod:`holdfast.v1`.
"""

from holdfast._core import (
    DEV_ENDPOINTS,
    LOCK_WAIT_MAX,
    RETRY_BUDGET,
    RPC_TIMEOUT,
    TLS,
    Event,
    Health,
    Leader,
    Observation,
)
from holdfast.client import Client, Hold, Leadership, Observe, Session, Watch
from holdfast.errors import (
    Compacted,
    FailedPrecondition,
    HoldfastError,
    InvalidArgument,
    LimitExceeded,
    LockDelayed,
    LockTimeout,
    PermissionDenied,
    PolicyDenied,
    SessionLost,
    StaleToken,
    Unauthenticated,
    Unavailable,
)

__all__ = [
    "DEV_ENDPOINTS",
    "LOCK_WAIT_MAX",
    "RETRY_BUDGET",
    "RPC_TIMEOUT",
    "TLS",
    "Client",
    "Compacted",
    "Event",
    "FailedPrecondition",
    "Health",
    "Hold",
    "HoldfastError",
    "InvalidArgument",
    "Leader",
    "Leadership",
    "LimitExceeded",
    "LockDelayed",
    "LockTimeout",
    "Observation",
    "Observe",
    "PermissionDenied",
    "PolicyDenied",
    "Session",
    "SessionLost",
    "StaleToken",
    "Unauthenticated",
    "Unavailable",
    "Watch",
]
