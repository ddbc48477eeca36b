"""A site's warm worker: flip's ClientApp for every message its SuperNode receives, in one
long-lived process.

Flower's default starts a fresh `flwr-clientapp` per message, which imports torch and
Lightning and reads the site's data every time. This worker claims each ClientApp task from
the SuperNode's local Runtime API (`flower-supernode --isolation process`), runs flip's
ClientApp on it in-process and pushes the reply, as `flwr-clientapp` would; the imports,
accepted configs and set-up data modules stay warm between messages. It runs flip's own
ClientApp only, the one installed here: a run whose app bundle asks for another ClientApp or
carries files is refused (`app_bundle.check_fab`).
"""

from __future__ import annotations

import argparse
import logging
import time
from typing import Any

from flip.errors import FlipError

log = logging.getLogger(__name__)


def _reason(error: BaseException) -> str:
    """One line for the server: a site's refusal as it is, anything else with its type."""
    return str(error) if isinstance(error, FlipError) else f"{type(error).__name__}: {error}"


# Flower retries an object that is not there yet after 1 s, then 2 s, ...: the worker asks for a
# message as soon as the SuperNode announces it, usually before the SuperNode has all of it.
PULL_BACKOFF_S, PULL_BACKOFF_CAP_S = 0.02, 0.25


def pull_task_input(client: Any) -> tuple[Any, Any, Any]:
    """The task's message, context and app bundle (as Flower's `pull_task_input`, with short retries)."""
    from flwr.common.serde import context_from_proto, fab_from_proto, run_from_proto
    from flwr.proto.node_pb2 import Node
    from flwr.proto.runtime_pb2 import PullAppMessagesRequest, PullTaskInputRequest
    from flwr.supercore.inflatable.inflatable_protobuf_utils import (
        make_confirm_message_received_fn_protobuf,
        make_pull_object_fn_protobuf,
    )
    from flwr.supercore.inflatable.inflatable_utils import pull_and_inflate_object_from_tree
    from flwr.supercore.task_identity import TaskIdentity
    from flwr.app import Message

    task_input = client.PullTaskInput(PullTaskInputRequest())
    TaskIdentity.task_id = task_input.task_id
    TaskIdentity.run_id = task_input.run.run_id
    TaskIdentity.node_id = task_input.context.node_id
    context = context_from_proto(task_input.context)
    run_from_proto(task_input.run)
    fab = fab_from_proto(task_input.fab)
    pulled = client.PullMessages(PullAppMessagesRequest())
    if not pulled.messages_list:
        raise RuntimeError("no message for this task")
    node = Node(node_id=context.node_id)
    tree = pulled.message_object_trees[0]
    message = pull_and_inflate_object_from_tree(
        tree,
        make_pull_object_fn_protobuf(client.PullObject, node, context.run_id),
        make_confirm_message_received_fn_protobuf(client.ConfirmMessageReceived, node, context.run_id),
        return_type=Message,
        initial_backoff=PULL_BACKOFF_S,
        backoff_cap=PULL_BACKOFF_CAP_S,
    )
    message.metadata.__dict__["_message_id"] = tree.object_id
    return message, context, fab


def describe(message: Any) -> str:
    """e.g. `train message of round 2` (what the worker logs as it starts one)."""
    config = message.content.get("config") if message.has_content() else None
    server_round = config.get("server-round") if config is not None else None
    return f"{message.metadata.message_type} message" + (f" of round {server_round}" if server_round is not None else "")


def run_task(address: str, token: str) -> None:
    """Pull one ClientApp task, run flip's ClientApp on it, push the reply and the task's end."""
    from flwr.app import Message
    from flwr.app.error import Error
    from flwr.common.constant import ErrorCode, SubStatus
    from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
    from flwr.supernode.runtime.run_clientapp import push_message, push_task_output

    from flip.federation.client_app import app
    from flip.federation.deployment.app_bundle import check_fab
    from flip.federation.deployment.runtime import runtime_client

    client = runtime_client(address, None, token=token, component="flwr-clientapp")
    heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
    heartbeat.start()
    message = context = reply = None
    status, details = SubStatus.FAILED, "the task failed"
    try:
        message, context, fab = pull_task_input(client)
        log.info("run %s: %s", context.run_id, describe(message))
        check_fab(fab.content)
        reply = app(message=message, context=context)
        status, details = SubStatus.COMPLETED, ""
    except Exception as error:  # noqa: BLE001  (every failure goes back to the server as the reply)
        details = _reason(error)
        log.error("%s", details, exc_info=not isinstance(error, FlipError))
        if message is not None:
            reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=details), reply_to=message)
    finally:
        try:
            if reply is not None and context is not None:
                push_message(client, reply, context)
            push_task_output(client, context, status, details)
        finally:
            heartbeat.stop()
            client.close()


def warm_up() -> None:
    """Import what every message needs, before the first one arrives."""
    import flip.federation.client_app  # noqa: F401
    import flip.federation.site  # noqa: F401  (torch, Lightning)


def main(argv: list[str] | None = None) -> None:
    from flwr.supercore.constant import TaskType

    from flip.federation.deployment.runtime import Stopping, claim_tasks

    parser = argparse.ArgumentParser(prog="flip-site-worker")
    parser.add_argument("--runtime-api-address", required=True)
    parser.add_argument("--poll-s", type=float, default=0.1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per poll otherwise
    stopping = Stopping()
    warm_up()
    log.info("worker ready: ClientApp tasks from %s", args.runtime_api_address)

    def handle(task: Any, token: str) -> None:
        started = time.perf_counter()
        run_task(args.runtime_api_address, token)
        log.info("run %s: a message handled in %.2f s", task.run_id, time.perf_counter() - started)

    claim_tasks(args.runtime_api_address, None, TaskType.CLIENT_APP, args.poll_s, handle, stopping)
