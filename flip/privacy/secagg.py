"""SecAgg+ for flip's Message-API strategies, through Flower's legacy workflow and client mod.

Flower implements SecAgg+ only for its legacy API: the server workflow `SecAggPlusWorkflow`
drives a legacy strategy, and the client mod `secaggplus_mod` wraps a legacy fit. This module
adapts both halves to flip's message formats:

- server: `SecAggPlusGrid` turns one round's train messages into the workflow's four stages and
  answers with one reply per site that took part, each carrying the same unmasked weighted mean
  (with that site's own metrics), so any weighted-mean strategy aggregates to that mean;
- client: `secagg_train` runs flip's train function inside `secaggplus_mod`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from typing import Any, Callable, Iterable, Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, MessageType, MetricRecord, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.common import Code, FitIns, FitRes, Status, parameters_to_ndarrays
from flwr.common.constant import ErrorCode
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.compat.common import recorddict_compat as compat
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.server.workflow.secure_aggregation.secaggplus_workflow import WorkflowState

from flip.privacy.mechanisms.secagg import WEIGHT_KEY, SecAggConfig
from flip.seeding import seeded_random

ARRAYS, CONFIG, METRICS = "arrays", "config", "metrics"
NUM_EXAMPLES = "num-examples"
# Train config: the names of the arrays, in the order of the legacy Parameters (which drop names).
ARRAY_KEYS = "secagg-array-keys"
_LEGACY_PREFIX = "fitres."

TrainFn = Callable[[Message, Context], Message]


# ---------------------------------------------------------------------------------------------
# Server half
# ---------------------------------------------------------------------------------------------


def build_workflow(settings: Mapping[str, Any], timeout: float | None = None) -> SecAggPlusWorkflow:
    """Flower's SecAgg+ workflow from `privacy.secagg` settings (missing keys: SecAggConfig's defaults)."""
    values = {**asdict(SecAggConfig()), **dict(settings)}
    unknown = set(values) - set(asdict(SecAggConfig()))
    if unknown:
        raise ValueError(f"unknown SecAgg+ settings: {sorted(unknown)}")
    threshold = int(values["reconstruction_threshold"])
    if threshold < 2:
        # Flower reads an integer threshold of 1 as the fraction 1.0, i.e. every share.
        raise ValueError(f"privacy.secagg.reconstruction_threshold must be at least 2, got {threshold}")
    num_shares = values["num_shares"]
    return SecAggPlusWorkflow(
        num_shares=1.0 if num_shares is None else int(num_shares),
        reconstruction_threshold=threshold,
        max_weight=float(values["max_weight"]),
        clipping_range=float(values["clipping_range"]),
        quantization_range=int(values["quantization_range"]),
        modulus_range=int(values["modulus_range"]),
        timeout=timeout,
    )


class SecAggPlusGrid:
    """A grid that runs every batch of train messages as one SecAgg+ round; other messages pass through."""

    def __init__(self, grid: Any, settings: Mapping[str, Any], seed: str, timeout: float | None = None):
        self._grid = grid
        self._seed = seed
        self._timeout = timeout
        self._workflow = build_workflow(settings, timeout)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def send_and_receive(self, messages: Iterable[Message], timeout: float | None = None) -> list[Message]:
        messages = list(messages)
        train = [m for m in messages if m.metadata.message_type == MessageType.TRAIN]
        others = [m for m in messages if m.metadata.message_type != MessageType.TRAIN]
        replies = list(self._grid.send_and_receive(others, timeout=timeout)) if others else []
        if train:
            replies += self._secure_round(train, timeout)
        return replies

    def _secure_round(self, messages: list[Message], timeout: float | None) -> list[Message]:
        server_round = int(messages[0].content[CONFIG]["server-round"])
        if len(messages) < 2:
            reason = f"SecAgg+ needs at least 2 sampled sites, round {server_round} sampled {len(messages)}"
            return [Message(Error(ErrorCode.UNKNOWN, reason), reply_to=m) for m in messages]
        stage_log = _StageLog(self._grid)
        shim = _LegacyStrategy([(GridClientProxy(m.metadata.dst_node_id, stage_log, m.metadata.run_id), _fit_ins(m)) for m in messages])
        context = _legacy_context(shim, server_round, messages[0].metadata.run_id)
        state = WorkflowState()
        self._workflow.timeout = self._timeout if self._timeout is not None else timeout
        # The workflow shuffles the sampled nodes with the global `random` module.
        with seeded_random(f"{self._seed}-secagg-{server_round}"):
            halted_at = _run_stages(self._workflow, stage_log, context, state)
        if halted_at is None and shim.aggregate is not None:
            aggregate = named_aggregate(shim.aggregate, messages[0].content[ARRAYS])
            return _site_replies(messages, stage_log, aggregate, "")
        return _site_replies(messages, stage_log, None, _halt_reason(server_round, halted_at, state))


class _StageLog:
    """The grid the workflow talks to: passes messages on, keeping each stage's addressees and replies."""

    def __init__(self, grid: Any):
        self._grid = grid
        self.sent: dict[str, set[int]] = {}
        self.replies: dict[str, dict[int, Message]] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def send_and_receive(self, messages: Iterable[Message], timeout: float | None = None) -> list[Message]:
        messages = list(messages)
        stage = str(messages[0].content.config_records[RECORD_KEY_CONFIGS][Key.STAGE]) if messages else ""
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        self.sent[stage] = {m.metadata.dst_node_id for m in messages}
        self.replies[stage] = {r.metadata.src_node_id: r for r in replies}
        return replies

    def outcome(self, node: int) -> Error | str | None:
        """How `node` left the protocol: its first error, "missing" if it stopped answering, else None."""
        for stage in Stage.all():
            if node not in self.sent.get(stage, ()):
                continue
            reply = self.replies[stage].get(node)
            if reply is None:
                return "missing"
            if reply.has_error():
                return reply.error
        return None


class _LegacyStrategy:
    """The legacy strategy the workflow drives: flip's prepared messages as FitIns; keeps the sum."""

    def __init__(self, instructions: list[tuple[GridClientProxy, FitIns]]):
        self._instructions = instructions
        self.aggregate: list[np.ndarray] | None = None

    def configure_fit(self, server_round: int, parameters: Any, client_manager: Any) -> list[tuple[GridClientProxy, FitIns]]:
        return self._instructions

    def aggregate_fit(self, server_round: int, results: list, failures: list) -> tuple[None, dict]:
        # The workflow has already replaced every result's parameters by the unmasked weighted mean.
        if results:
            self.aggregate = parameters_to_ndarrays(results[0][1].parameters)
        return None, {}


def _fit_ins(message: Message) -> FitIns:
    """A flip train message as legacy FitIns; the array names travel in the config."""
    arrays = message.content[ARRAYS]
    config = dict(message.content[CONFIG])
    for key, value in config.items():
        if not isinstance(value, (bool, bytes, float, int, str)):
            raise TypeError(f"SecAgg+ sends the train config as legacy FitIns: '{key}' must be a scalar, got {type(value).__name__}")
    config[ARRAY_KEYS] = json.dumps(list(arrays.keys()))
    return FitIns(compat.arrayrecord_to_parameters(arrays, keep_input=True), config)


def _legacy_context(strategy: _LegacyStrategy, server_round: int, run_id: int) -> LegacyContext:
    """The state the workflow reads: the current round (its parameters come from `configure_fit`)."""
    state = RecordDict(
        {
            MAIN_CONFIGS_RECORD: ConfigRecord({WorkflowKey.CURRENT_ROUND: server_round}),
            MAIN_PARAMS_RECORD: ArrayRecord(),
        }
    )
    context = Context(run_id=run_id, node_id=0, node_config={}, state=state, run_config={})
    return LegacyContext(context, strategy=strategy)  # type: ignore[arg-type]


def _run_stages(workflow: SecAggPlusWorkflow, grid: _StageLog, context: LegacyContext, state: WorkflowState) -> str | None:
    """Flower's four SecAgg+ stages in order: the stage at which the protocol halted, or None."""
    stages = {
        Stage.SETUP: workflow.setup_stage,
        Stage.SHARE_KEYS: workflow.share_keys_stage,
        Stage.COLLECT_MASKED_VECTORS: workflow.collect_masked_vectors_stage,
        Stage.UNMASK: workflow.unmask_stage,
    }
    for name, stage in stages.items():
        if not stage(grid, context, state):  # type: ignore[arg-type]
            return name
    return None


def _halt_reason(server_round: int, stage: str | None, state: WorkflowState) -> str:
    return (
        f"SecAgg+ halted in round {server_round} at stage '{stage}': {len(state.active_node_ids)} of "
        f"{len(state.sampled_node_ids)} sampled site(s) still taking part, but every site needs "
        f"{state.threshold} live holders of its {state.num_shares} key shares "
        "(privacy.secagg.reconstruction_threshold)"
    )


def named_aggregate(aggregate: list[np.ndarray], template: ArrayRecord) -> ArrayRecord:
    """The workflow's float64 arrays under the names, shapes and dtypes of the arrays sent."""
    if len(aggregate) != len(template):
        raise ValueError(f"SecAgg+ returned {len(aggregate)} arrays for {len(template)} sent")
    named = {}
    for (name, sent), values in zip(template.items(), aggregate):
        shape = tuple(sent.shape)
        if values.shape != shape and not (shape == () and values.shape == (1,)):  # see `_no_scalars`
            raise ValueError(f"SecAgg+ returned shape {values.shape} for '{name}', sent {shape}")
        dtype = np.dtype(sent.dtype)
        if not np.issubdtype(dtype, np.floating):
            values = np.rint(values)
        named[name] = Array(np.array(values, dtype=dtype).reshape(shape))
    return ArrayRecord(named)


def _site_replies(messages: list[Message], stage_log: _StageLog, aggregate: ArrayRecord | None, halt_reason: str) -> list[Message]:
    """One reply per site: the aggregate if its update is in it, else its error; silent sites get none."""
    masked = stage_log.replies.get(Stage.COLLECT_MASKED_VECTORS, {})
    replies = []
    for message in messages:
        node = message.metadata.dst_node_id
        outcome = stage_log.outcome(node)
        if aggregate is not None and node in masked and not masked[node].has_error():
            replies.append(_aggregate_reply(message, masked[node], aggregate))
        elif isinstance(outcome, Error):
            replies.append(Message(Error(outcome.code, outcome.reason), reply_to=message))
        elif outcome is None:
            replies.append(Message(Error(ErrorCode.UNKNOWN, halt_reason), reply_to=message))
    return replies


def _aggregate_reply(message: Message, masked_reply: Message, aggregate: ArrayRecord) -> Message:
    """The aggregate, with the site's own records from its masked-vector reply (Flower's aside)."""
    content = RecordDict({ARRAYS: ArrayRecord(dict(aggregate))})
    for key, record in masked_reply.content.items():
        if not (key == RECORD_KEY_CONFIGS or key.startswith(_LEGACY_PREFIX) or isinstance(record, ArrayRecord)):
            content[key] = record
    return Message(content, reply_to=message)


# ---------------------------------------------------------------------------------------------
# Client half
# ---------------------------------------------------------------------------------------------


class _SiteFailed(Exception):
    def __init__(self, error: Error):
        super().__init__(error.reason)
        self.error = error


def is_secagg_message(message: Message) -> bool:
    """Whether a train message is a step of the SecAgg+ protocol."""
    return message.has_content() and RECORD_KEY_CONFIGS in message.content.config_records


def secagg_train(message: Message, context: Context, train: TrainFn) -> Message:
    """One SecAgg+ step on a site; at the masked-vector step, flip's `train` computes the update.

    A failed `train` (an error reply) comes back as that error, and the site drops out of the round.
    """
    try:
        return secaggplus_mod(message, context, _legacy_fit(train))
    except _SiteFailed as failed:
        return Message(failed.error, reply_to=message)


def _legacy_fit(train: TrainFn) -> TrainFn:
    """flip's train function as the legacy fit that `secaggplus_mod` calls."""

    def fit(message: Message, context: Context) -> Message:
        names, flip_message = _flip_message(message)
        reply = train(flip_message, context)
        if reply.has_error():
            raise _SiteFailed(reply.error)
        return Message(_legacy_reply(reply.content, names), reply_to=message)

    return fit


def _flip_message(message: Message) -> tuple[list[str], Message]:
    """The legacy fit message in flip's format: named arrays and the train config."""
    fit_ins = compat.recorddict_to_fitins(message.content, keep_input=True)
    config = dict(fit_ins.config)
    names = json.loads(str(config.pop(ARRAY_KEYS)))
    arrays = parameters_to_ndarrays(fit_ins.parameters)
    record = ArrayRecord({name: Array(array) for name, array in zip(names, arrays, strict=True)})
    flip_message = Message(RecordDict({ARRAYS: record, CONFIG: ConfigRecord(config)}), metadata=message.metadata)
    return names, flip_message


def _legacy_reply(content: RecordDict, names: list[str]) -> RecordDict:
    """flip's train reply as a legacy FitRes, keeping flip's other records for the server."""
    if ARRAYS not in content:
        raise _no_update(content)
    arrays = content[ARRAYS]
    if sorted(arrays.keys()) != sorted(names):
        raise ValueError(f"train reply arrays {sorted(arrays.keys())} differ from the arrays sent {sorted(names)}")
    ordered = ArrayRecord({name: _no_scalars(arrays[name]) for name in names})
    metrics: MetricRecord = content[METRICS]
    weight = metrics.get(WEIGHT_KEY, metrics[NUM_EXAMPLES])
    parameters = compat.arrayrecord_to_parameters(ordered, keep_input=True)
    _seed_rounding(parameters.tensors, weight)
    scalars = {key: value for key, value in metrics.items() if isinstance(value, (int, float))}
    fit_res = FitRes(Status(Code.OK, "Success"), parameters, weight, scalars)  # type: ignore[arg-type]
    legacy = compat.fitres_to_recorddict(fit_res, keep_input=True)
    for key, record in content.items():
        if not isinstance(record, ArrayRecord):
            legacy[key] = record
    return legacy


def _no_update(content: RecordDict) -> _SiteFailed:
    """A reply without arrays (e.g. withheld by the site's policy) cannot join the secure sum."""
    why = "; ".join(str(record["reason"]) for record in content.config_records.values() if "reason" in record)
    reason = f"the site sent no update{f' ({why})' if why else ''}, so it leaves this SecAgg+ round"
    return _SiteFailed(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason))


def _no_scalars(array: Array) -> Array:
    """0-d arrays as 1-element vectors: Flower's unmasking rescales arrays in place, which misses
    the numpy scalars that 0-d arrays turn into (flwr 1.42); the server reshapes them back."""
    return Array(array.numpy().reshape(1)) if tuple(array.shape) == () else array


def _seed_rounding(tensors: list[bytes], weight: float) -> None:
    """Seed numpy's global RNG, which Flower's stochastic rounding of the update draws from next.

    The seed is a digest of the update, so the same update is always rounded the same way,
    whatever else used the RNG in this process before.
    """
    digest = hashlib.sha256(repr(float(weight)).encode())
    for tensor in tensors:
        digest.update(tensor)
    np.random.seed(int.from_bytes(digest.digest()[:4], "little"))
