"""Talking to a SuperLink: a first TLS probe that says in one line what is wrong (unreachable,
no TLS, a certificate the CA does not verify), then Flower's Control API (`ControlHttpClient`,
as `flwr run` uses it): submit, follow, list and stop runs, enrol site keys.

The open-source SuperLink does not authenticate Control API callers: whoever reaches this port
can do all of this, so keep it behind the server's firewall (see the README).
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import httpx

from flip.errors import FlipError

PROBE_TIMEOUT_S = 5.0


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def probe_superlink(address: str, ca: Path | None, timeout: float = PROBE_TIMEOUT_S) -> None:
    """FlipError naming what failed unless a TLS connection to `address` verifies with `ca`
    (or, with no `ca`, a plain TCP connection opens)."""
    host, port = split_address(address)
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            if ca is None:
                return
            context = ssl.create_default_context(cafile=str(ca))
            with context.wrap_socket(sock, server_hostname=host):
                return
    except ssl.SSLCertVerificationError as error:
        raise FlipError(
            f"the server at {address} presents a TLS certificate that {ca} does not verify ({error.verify_message}); "
            "use the ca.pem of the `flip certs` folder the server's certificate came from, and a name the certificate holds"
        ) from None
    except ssl.SSLError as error:
        raise FlipError(f"the server at {address} did not complete a TLS handshake ({error.reason or error}); was it started with --insecure?") from None
    except ConnectionRefusedError:
        raise FlipError(f"cannot reach the SuperLink at {address}: connection refused (is `flip server` running there, on that port?)") from None
    except socket.gaierror as error:
        raise FlipError(f"cannot reach the SuperLink at {address}: unknown host ({error.strerror})") from None
    except (socket.timeout, TimeoutError):
        raise FlipError(f"cannot reach the SuperLink at {address}: no answer within {timeout:.0f} s (a firewall?)") from None
    except OSError as error:
        raise FlipError(f"cannot reach the SuperLink at {address}: {error.strerror or error}") from None


def ca_bytes(ca: str | Path | None, key: str) -> Path | None:
    if ca is None:
        return None
    path = Path(ca).expanduser().resolve()
    if not path.is_file():
        raise FlipError(f"{key}: no such CA certificate file: {path}")
    return path


@dataclass
class RunInfo:
    run_id: int
    status: str  # pending, starting, running, finished
    sub_status: str  # completed, failed, stopped (when finished)
    details: str
    pending_at: str
    finished_at: str


class Control:
    """A Control API connection to the SuperLink at `address` (probed first)."""

    def __init__(self, address: str, ca: Path | None, insecure: bool = False):
        from flwr.supercore.control import ControlHttpClient
        from flwr.supercore.interceptors.http.runtime_version import RuntimeVersionHttpInterceptor

        if ca is None and not insecure:
            raise FlipError("a TLS connection needs the CA certificate (ca.pem); pass it, or --insecure for a server started with --insecure")
        probe_superlink(address, None if insecure else ca)
        self.address = address
        self.client = ControlHttpClient.from_server_address(
            server_address=address,
            insecure=insecure,
            root_certificates=None if insecure else ca.read_bytes(),
            interceptors=[RuntimeVersionHttpInterceptor(component_name="flwr CLI")],
        )

    def _call(self, method: str, request: Any) -> Any:
        try:
            return getattr(self.client, method)(request)
        except httpx.HTTPStatusError as error:
            raise FlipError(f"the SuperLink at {self.address} refused {method}: {_error_text(error)}") from None
        except httpx.TransportError as error:
            raise FlipError(f"lost the SuperLink at {self.address} ({method}): {error}") from None

    def start_run(self, fab: bytes, run_config: dict[str, Any]) -> int:
        import hashlib

        from flwr.common.serde import fab_to_proto, user_config_to_proto
        from flwr.proto.control_pb2 import StartRunRequest
        from flwr.supercore.fab import Fab

        request = StartRunRequest(fab=fab_to_proto(Fab(hashlib.sha256(fab).hexdigest(), fab, {})), override_config=user_config_to_proto(run_config))
        response = self._call("StartRun", request)
        if not response.HasField("run_id"):
            raise FlipError(f"the SuperLink at {self.address} did not start the run{': ' + response.note if response.HasField('note') else ''}")
        return int(response.run_id)

    def runs(self, run_id: int | None = None) -> list[RunInfo]:
        from flwr.proto.control_pb2 import ListRunsRequest

        request = ListRunsRequest(run_id=run_id) if run_id is not None else ListRunsRequest()
        response = self._call("ListRuns", request)
        found = [
            RunInfo(int(r.run_id), r.status.status, r.status.sub_status, r.status.details, r.pending_at, r.finished_at)
            for r in response.run_dict.values()
        ]
        return sorted(found, key=lambda info: info.pending_at)

    def run(self, run_id: int) -> RunInfo:
        found = [info for info in self.runs(run_id) if info.run_id == run_id]
        if not found:
            raise FlipError(f"the SuperLink at {self.address} has no run {run_id}")
        return found[0]

    def logs(self, run_id: int, after: float = 0.0) -> Iterator[tuple[str, float]]:
        """The run's log text as it comes, until the run finishes."""
        from flwr.proto.control_pb2 import StreamLogsRequest

        try:
            for response in self.client.StreamLogs(StreamLogsRequest(run_id=run_id, after_timestamp=after)):
                yield response.log_output, response.latest_timestamp
        except httpx.HTTPStatusError as error:
            raise FlipError(f"the SuperLink at {self.address} refused StreamLogs: {_error_text(error)}") from None
        except httpx.TransportError as error:
            raise FlipError(f"lost the SuperLink at {self.address} while following run {run_id}: {error}") from None

    def stop_run(self, run_id: int) -> bool:
        from flwr.proto.control_pb2 import StopRunRequest

        return bool(self._call("StopRun", StopRunRequest(run_id=run_id)).success)

    def register_node(self, public_key: bytes, name: str) -> int:
        from flwr.proto.control_pb2 import RegisterNodeRequest

        return int(self._call("RegisterNode", RegisterNodeRequest(public_key=public_key, name=name)).node_id)

    def nodes(self) -> list[Any]:
        from flwr.proto.control_pb2 import ListNodesRequest

        return list(self._call("ListNodes", ListNodesRequest()).nodes_info)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Control:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _error_text(error: httpx.HTTPStatusError) -> str:
    try:
        body = error.response.json()
        return str(body.get("detail") or body.get("message") or body)
    except ValueError:
        return error.response.text.strip()[:300] or str(error)
