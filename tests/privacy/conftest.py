"""Shared helpers of the privacy tests: plans of real configs, and model states as Flower records."""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.client.mod.utils import make_ffn
from flwr.serverapp.strategy import FedAvg

from flip.experiment.recipes import resolve_recipe
from flip.experiment.validate import config_problems, validate
from flip.privacy.plan import UNIFORM_WEIGHT, PrivacyPlan

NUM_SITES = 4
SIM = ["federation=simulation", f"federation.num_sites={NUM_SITES}"]


def plan_for(option: str, *overrides: str) -> PrivacyPlan:
    return PrivacyPlan.from_config(validate(resolve_recipe("dicom_synthetic_fedavg"), [*SIM, f"privacy={option}", *overrides]))


def problems(*overrides: str) -> list[str]:
    """Every problem of the federated recipe with `overrides`, on NUM_SITES sites."""
    return config_problems(resolve_recipe("dicom_synthetic_fedavg"), [*SIM, *overrides])


def model_state(seed: int, scale: float = 1.0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"conv.weight": scale * rng.normal(size=(8, 1, 3, 3)), "fc.weight": scale * rng.normal(size=(2, 400)), "fc.bias": np.zeros(2)}


def as_record(state: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({key: torch.tensor(value, dtype=torch.float64) for key, value in state.items()})


def flat(record: ArrayRecord) -> np.ndarray:
    return np.concatenate([array.ravel() for array in record.to_numpy_ndarrays()])


def aggregate_with(plan: PrivacyPlan, grid, global_state: dict, site_states: list[dict]) -> np.ndarray:
    """One round of the plan's server half over real Flower messages; returns the aggregate."""
    strategy = plan.wrap_strategy(FedAvg(fraction_evaluate=0.0, weighted_by_key=UNIFORM_WEIGHT))
    instructions = list(strategy.configure_train(1, as_record(global_state), ConfigRecord(), grid))
    assert len(instructions) == NUM_SITES
    replies = [
        Message(RecordDict({"arrays": as_record(state), "metrics": MetricRecord({"num-examples": 10 * (i + 1), UNIFORM_WEIGHT: 1.0})}), reply_to=message)
        for i, (message, state) in enumerate(zip(instructions, site_states))
    ]
    arrays, _ = strategy.aggregate_train(1, replies)
    return flat(arrays)


def run_site_mods(plan: PrivacyPlan, global_state: dict, local_state: dict, config: dict) -> np.ndarray:
    """A site's training reply through the plan's client mods; returns the weights sent."""

    def train(message: Message, context: Context) -> Message:
        content = RecordDict({"arrays": as_record(local_state), "metrics": MetricRecord({"num-examples": 5})})
        return Message(content, reply_to=message)

    message = Message(
        RecordDict({"arrays": as_record(global_state), "config": ConfigRecord(config)}), dst_node_id=1, message_type=MessageType.TRAIN
    )
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    reply = make_ffn(train, plan.train_mods())(message, context)
    assert not reply.has_error(), reply.error
    return flat(reply.content["arrays"])
