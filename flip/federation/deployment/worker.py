"""A site's warm worker: flip's ClientApp for every message its SuperNode receives, in one
long-lived process.

Flower's default starts a fresh `flwr-clientapp` per message, which imports torch and
Lightning and reads the site's data every time. This worker claims each ClientApp task from
the SuperNode's local Runtime API (`flower-supernode --isolation process`), runs flip's
ClientApp on it in-process and pushes the reply, as `flwr-clientapp` would; the imports,
accepted configs and set-up data modules stay warm between messages. It runs flip's own
ClientApp only, the one installed here: a run whose app bundle asks for another ClientApp or
carries files is refused (`app_bundle.check_fab`).

Each task is received in a thread of its own and computed one at a time: a task whose message
never arrives (the SuperNode keeps the task of a message it dropped because its run stopped)
waits in its thread without holding up the next run.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from typing import Any

import httpx

from flip.errors import FlipError

log = logging.getLogger(__name__)


def _reason(error: BaseException) -> str:
    """One line for the server: a site's refusal as it is, anything else with its type."""
    return str(error) if isinstance(error, FlipError) else f"{type(error).__name__}: {error}"


# Flower retries an object that is not there yet after 1 s, then 2 s, ...: the worker asks for a
# message as soon as the SuperNode announces it, usually before the SuperNode has all of it.
PULL_BACKOFF_S, PULL_BACKOFF_CAP_S = 0.02, 0.25
# How often a pull that waits checks that the task is still on, and when it gives up.
PULL_CHECK_S, GIVE_UP_S = 3.0, 1800.0


def pull_task_input(client: Any) -> tuple[Any, Any, Any, Any]:
    """The task's input, message, context and app bundle (as Flower's `pull_task_input`, with
    short retries; FlipError if the task is given up before its message arrives)."""
    from flwr.app import Message
    from flwr.common.serde import context_from_proto, fab_from_proto
    from flwr.proto.node_pb2 import Node
    from flwr.proto.runtime_pb2 import PullAppMessagesRequest, PullTaskInputRequest
    from flwr.supercore.inflatable.inflatable_protobuf_utils import (
        make_confirm_message_received_fn_protobuf,
        make_pull_object_fn_protobuf,
    )
    from flwr.supercore.inflatable.inflatable_utils import ObjectPullError, pull_and_inflate_object_from_tree

    task_input = client.PullTaskInput(PullTaskInputRequest())
    context = context_from_proto(task_input.context)
    fab = fab_from_proto(task_input.fab)
    pulled = client.PullMessages(PullAppMessagesRequest())
    if not pulled.messages_list:
        raise FlipError("the task came without a message")
    node = Node(node_id=context.node_id)
    tree = pulled.message_object_trees[0]
    deadline = time.monotonic() + GIVE_UP_S
    while True:
        try:
            message = pull_and_inflate_object_from_tree(
                tree,
                make_pull_object_fn_protobuf(client.PullObject, node, context.run_id),
                make_confirm_message_received_fn_protobuf(client.ConfirmMessageReceived, node, context.run_id),
                return_type=Message,
                max_time=PULL_CHECK_S,
                initial_backoff=PULL_BACKOFF_S,
                backoff_cap=PULL_BACKOFF_CAP_S,
            )
            break
        except ObjectPullError:  # still arriving, unless the task was given up (its run stopped)
            if not task_alive(client) or time.monotonic() > deadline:
                raise FlipError(f"run {context.run_id}: the message never arrived (its run stopped?)") from None
    message.metadata.__dict__["_message_id"] = tree.object_id
    return task_input, message, context, fab


def task_alive(client: Any) -> bool:
    """Whether the SuperNode still counts this task as claimed (a heartbeat it accepts)."""
    from flwr.proto.runtime_pb2 import SendTaskHeartbeatRequest

    try:
        return bool(client.SendTaskHeartbeat(SendTaskHeartbeatRequest()).success)
    except httpx.HTTPError:
        return False


def heartbeat_fn(client: Any) -> Any:
    """The task's heartbeat. Unlike Flower's, a refused one does not raise SIGINT (which would
    stop this long-lived worker): a task the SuperNode gave up fails where it next talks to it."""

    def beat() -> bool:
        task_alive(client)
        return True

    return beat


def describe(message: Any) -> str:
    """e.g. `train message of round 2` (what the worker logs as it starts one)."""
    config = message.content.get("config") if message.has_content() else None
    server_round = config.get("server-round") if config is not None else None
    return f"{message.metadata.message_type} message" + (f" of round {server_round}" if server_round is not None else "")


def run_task(address: str, token: str, compute: threading.Lock) -> None:
    """Receive one ClientApp task, run flip's ClientApp on it (holding `compute`), push the reply
    and the task's end."""
    from flwr.app import Message
    from flwr.app.error import Error
    from flwr.common.constant import ErrorCode, SubStatus
    from flwr.supercore.heartbeat import HeartbeatSender
    from flwr.supercore.task_identity import TaskIdentity
    from flwr.supernode.runtime.run_clientapp import push_message, push_task_output

    from flip.federation.client_app import app
    from flip.federation.deployment.app_bundle import check_fab
    from flip.federation.deployment.runtime import runtime_client

    client = runtime_client(address, None, token=token, component="flwr-clientapp")
    heartbeat = HeartbeatSender(heartbeat_fn(client))
    heartbeat.start()
    message = context = reply = None
    status, details = SubStatus.FAILED, "the task failed"
    try:
        task_input, message, context, fab = pull_task_input(client)
        with compute:
            # Flower's messages take their sender from these process-wide values.
            TaskIdentity.task_id, TaskIdentity.run_id = task_input.task_id, task_input.run.run_id
            TaskIdentity.node_id = task_input.context.node_id
            log.info("run %s: %s", context.run_id, describe(message))
            try:
                check_fab(fab.content)
                reply = app(message=message, context=context)
                status, details = SubStatus.COMPLETED, ""
            finally:
                if reply is not None:
                    push_message(client, reply, context)
    except Exception as error:  # noqa: BLE001  (every failure goes back to the server as the reply)
        if sys.is_finalizing():  # the worker is stopping: a message still arriving is dropped
            return
        details = _reason(error)
        log.error("%s", details, exc_info=not isinstance(error, FlipError))
        if message is not None and reply is None:
            try:
                push_message(client, Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=details), reply_to=message), context)
            except Exception as push_error:  # noqa: BLE001
                log.error("could not send the error back: %s", push_error)
    finally:
        try:
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
    compute = threading.Lock()
    stopping = Stopping(busy=compute.locked)
    warm_up()
    log.info("worker ready: ClientApp tasks from %s", args.runtime_api_address)

    def receive(task: Any, token: str) -> None:
        started = time.perf_counter()
        run_task(args.runtime_api_address, token, compute)
        log.info("run %s: a message handled in %.2f s", task.run_id, time.perf_counter() - started)

    def handle(task: Any, token: str) -> None:
        threading.Thread(target=receive, args=(task, token), name=f"task-{task.task_id}", daemon=True).start()

    claim_tasks(args.runtime_api_address, None, TaskType.CLIENT_APP, args.poll_s, handle, stopping)
    with compute:  # a message being computed is finished and sent before the worker exits
        pass
