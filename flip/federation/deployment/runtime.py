"""A client of a Runtime API (a SuperLink's or a SuperNode's), as Flower's own task processes
make one; and the loop that claims tasks from it."""

from __future__ import annotations

import logging
import signal
import time
from typing import Any, Callable

log = logging.getLogger(__name__)


# A local Runtime API that does not answer for this long is treated as gone.
RETRY_FOR_S = 30.0


def retries() -> Any:
    """Retry what a restarting API may refuse (transport errors, 502-504) for `RETRY_FOR_S`.

    Flower's own policy suits a process that runs one task: it sends the process SIGINT when a
    task's token is refused (401), and raises a BaseException for a stopped run (403). In a
    long-lived worker those are errors of one task, raised as such.
    """
    import httpx
    from flwr.supercore.retry.retry_invoker import RetryInvoker, exponential

    def give_up(error: Exception) -> bool:
        return isinstance(error, httpx.HTTPStatusError) and error.response.status_code not in (502, 503, 504)

    return RetryInvoker(
        wait_gen_factory=lambda: exponential(max_delay=2.0),
        recoverable_exceptions=(httpx.TransportError, httpx.HTTPStatusError),
        max_tries=None,
        max_time=RETRY_FOR_S,
        should_giveup=give_up,
    )


def runtime_client(address: str, root_certificates: bytes | None, token: str | None = None, component: str = "SuperExec") -> Any:
    from flwr.supercore.interceptors.http.runtime_token import RuntimeTokenHttpInterceptor
    from flwr.supercore.interceptors.http.runtime_version import RuntimeVersionHttpInterceptor
    from flwr.supercore.runtime.runtime_http_client import RuntimeHttpClient

    interceptors: list[Any] = [RuntimeVersionHttpInterceptor(component_name=component)]
    if token is not None:
        interceptors.append(RuntimeTokenHttpInterceptor(token))
    return RuntimeHttpClient.from_server_address(
        server_address=address,
        insecure=root_certificates is None,
        root_certificates=root_certificates,
        interceptors=interceptors,
        retry_invoker=retries(),
    )


class Stopping:
    """SIGTERM or SIGINT: while `busy()` (a task being computed) the loop ends after it; otherwise
    at once, also from inside a call that Flower's client retries."""

    def __init__(self, busy: Callable[[], bool] = lambda: False) -> None:
        self.requested = False
        self.busy = busy
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._request)

    def _request(self, signum: int, frame: object) -> None:
        self.requested = True
        if not self.busy():
            raise SystemExit(0)


def claim_tasks(address: str, root_certificates: bytes | None, task_type: str, poll_s: float, handle: Callable[[Any, str], None], stopping: Stopping, idle: Callable[[], None] = lambda: None) -> None:
    """Claim tasks of `task_type` one at a time and `handle(task, token)` each, until stopped."""
    from flwr.proto.runtime_pb2 import AcquireTaskRequest

    client = runtime_client(address, root_certificates)
    try:
        while not stopping.requested:
            try:
                response = client.AcquireTask(AcquireTaskRequest(supported_task_types=[task_type], agentapp_fab_hashes=[]))
            except Exception as error:  # noqa: BLE001  (the API may be restarting: try again)
                log.warning("Runtime API at %s: %s", address, error)
                time.sleep(1.0)
                continue
            if response.HasField("task") and response.token:
                handle(response.task, response.token)
                continue
            idle()
            time.sleep(poll_s)
    finally:
        client.close()
