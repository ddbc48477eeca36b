"""The plain site functions that Flower clients call, tested without Flower."""

from __future__ import annotations

import hashlib
import io
import math

import pytest
import torch

from flip.experiment.recipes import resolve_recipe
from flip.experiment.validate import validate
from flip.errors import FlipError
from flip.federation.shipping import pack_config, unpack_config
from flip.federation.site import evaluate_round, site_datamodule, train_round
from flip.federation.site_config import SiteSettings
from flip.federation.trust import SiteRefusal, accept_run
from flip.training import build_model
from tests.conftest import FAST_OVERRIDES, at_site, simulated_sites

SIM = [*FAST_OVERRIDES, "federation.num_sites=2", "federation.server_eval_site=site-3"]


@pytest.fixture(scope="module")
def cfg():
    return validate(resolve_recipe("dicom_synthetic_fedavg"), SIM)


def _distance(state, reference):
    return sum(float((state[k].float() - reference[k].float()).norm() ** 2) for k in reference) ** 0.5


def test_train_round_returns_new_weights_and_train_metrics(cfg):
    global_state = build_model(cfg).state_dict()
    reply = train_round(*at_site(cfg, 0), global_state, server_round=1)
    assert reply.report.site == "site-1"
    assert reply.num_examples == reply.report.split_sizes[0] > 0
    assert set(reply.state) == set(global_state)
    assert _distance(reply.state, global_state) > 0
    assert "train/loss" in reply.metrics


def test_train_round_is_repeatable(cfg):
    global_state = build_model(cfg).state_dict()
    first = train_round(*at_site(cfg, 1), global_state, server_round=2)
    second = train_round(*at_site(cfg, 1), global_state, server_round=2)
    assert all(torch.equal(first.state[k], second.state[k]) for k in global_state)


def test_fedprox_term_keeps_local_weights_near_the_global_ones(cfg):
    global_state = build_model(cfg).state_dict()
    free = train_round(*at_site(cfg, 0), global_state, server_round=1, proximal_mu=0.0)
    held = train_round(*at_site(cfg, 0), global_state, server_round=1, proximal_mu=50.0)
    assert _distance(held.state, global_state) < 0.5 * _distance(free.state, global_state)


@pytest.mark.parametrize("local_steps", [None, 3])
def test_a_learning_rate_schedule_runs_over_the_rounds_not_anew_in_each(local_steps):
    step_lr = "{_target_:torch.optim.lr_scheduler.StepLR,_partial_:true,step_size:1,gamma:0.5}"
    per_step = "{_target_:torch.optim.lr_scheduler.ExponentialLR,_partial_:true,gamma:0.9}"
    schedule_cfg = validate(resolve_recipe("dicom_synthetic_fedavg"), [
        *SIM, "model.optimizer.lr=0.01", f"++model.scheduler={step_lr if local_steps is None else per_step}",
        f"federation.local_steps={'null' if local_steps is None else local_steps}",
    ])
    global_state = build_model(schedule_cfg).state_dict()
    rates = [train_round(*at_site(schedule_cfg, 0), global_state, server_round=r).metrics["train/lr"] for r in (1, 2, 4)]
    if local_steps is None:  # one local epoch a round: round r trains at the rate of epoch r
        assert rates == pytest.approx([0.01, 0.005, 0.00125])
    else:  # ExponentialLR steps once an epoch: the epochs the rounds before (3 steps each) completed
        batches = min(len(site_datamodule(*at_site(schedule_cfg, 0)).train_dataloader()), schedule_cfg.trainer.limit_train_batches)
        assert batches == 2  # trainer=debug: an epoch is 2 batches
        assert rates == pytest.approx([0.01 * 0.9 ** ((r - 1) * local_steps // batches) for r in (1, 2, 4)])


def test_a_site_can_carry_its_optimizer_state_into_its_next_round(cfg):
    kept_cfg = validate(resolve_recipe("dicom_synthetic_fedavg"), [*SIM, "federation.keep_optimizer_state=true"])
    global_state = build_model(kept_cfg).state_dict()
    first = train_round(*at_site(kept_cfg, 0), global_state, server_round=1)
    moments = torch.load(io.BytesIO(first.optimizer_state), weights_only=True)
    assert moments and all({"step", "exp_avg", "exp_avg_sq"} <= set(entry) for entry in moments.values())
    carried = train_round(*at_site(kept_cfg, 0), first.state, server_round=2, optimizer_state=first.optimizer_state)
    fresh = train_round(*at_site(kept_cfg, 0), first.state, server_round=2)
    assert _distance(carried.state, fresh.state) > 0
    steps = torch.load(io.BytesIO(carried.optimizer_state), weights_only=True)[0]["step"]
    assert float(steps) == 2 * float(moments[0]["step"])  # Adam counted on from round 1
    off_cfg = validate(resolve_recipe("dicom_synthetic_fedavg"), [*SIM, "federation.keep_optimizer_state=false"])
    assert train_round(*at_site(off_cfg, 0), global_state, server_round=1).optimizer_state is None  # off: nothing kept


def test_logit_adjustment_trains_on_the_sites_own_label_prior(cfg):
    from flip.models.base import label_log_prior

    adjusted_cfg = validate(resolve_recipe("dicom_synthetic_fedavg"), [*SIM, "model.logit_adjustment=1.0"])
    datamodule = site_datamodule(*at_site(adjusted_cfg, 0))
    labels = datamodule.datasets["train"].tensors[-1].tolist()
    expected = [math.log((labels.count(c) + 1) / (len(labels) + 2)) for c in (0, 1)]
    assert label_log_prior(datamodule, 2).tolist() == pytest.approx(expected, rel=1e-6)
    global_state = build_model(adjusted_cfg).state_dict()
    adjusted = train_round(*at_site(adjusted_cfg, 0), global_state, server_round=1)
    plain = train_round(*at_site(cfg, 0), global_state, server_round=1)
    assert list(adjusted.state) == list(global_state)  # the prior never travels with the weights
    assert _distance(adjusted.state, plain.state) > 0


def test_evaluate_round_reports_val_and_test_with_counts(cfg):
    reply = evaluate_round(*at_site(cfg, 1), build_model(cfg).state_dict())
    assert reply.state is None
    assert {"val/accuracy", "val/auroc", "test/accuracy", "val/n", "test/n"} <= set(reply.metrics)
    assert reply.metrics["val/n"] == reply.report.split_sizes[1]


def test_site_refuses_a_tampered_config(cfg):
    text, digest = pack_config(cfg)
    tampered = text.replace('"seed":42', '"seed":43')
    assert tampered != text
    with pytest.raises(FlipError, match="does not match its sha256"):
        unpack_config(tampered, digest)


def _refusal(cfg, text: str) -> list[str]:
    """What site-1 of `cfg` says of a received `text`."""
    raw = simulated_sites(cfg)[0]
    with pytest.raises(SiteRefusal) as caught:
        accept_run(text, hashlib.sha256(text.encode()).hexdigest(), SiteSettings.from_mapping(raw, "site-1"))
    assert str(caught.value) == f"site-1 refuses this run: {'; '.join(caught.value.problems)}"
    return caught.value.problems


def test_site_refuses_targets_outside_its_allow_list(cfg):
    text, _ = pack_config(cfg)
    hostile = text.replace('"_target_":"torch.optim.Adam"', '"_target_":"subprocess.run"')
    assert hostile != text
    assert _refusal(cfg, hostile) == [
        "model.optimizer._target_: 'subprocess.run' is not an allowed optimizer (allowed: a class in torch.optim, "
        "and what the builder lists in its own allowed_targets) (rule: allow-list)"
    ]


def test_site_checks_types_of_what_it_receives(cfg):
    text, _ = pack_config(cfg)
    bad = text.replace('"num_rounds":', '"num_rounds":"many","was":')
    assert _refusal(cfg, bad)[:2] == ["federation.num_rounds: expected an int, got 'many'", "federation.was: unknown key"]
