"""What leaves a site, inspected on the replies of flip's real ClientApp: no identifiers, no file
paths, no per-sample values; small cohorts withheld; a policy refusal before any data is read."""

from __future__ import annotations

import csv
import tempfile
from pathlib import Path

import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict

from flip.experiment.recipes import resolve_recipe
from flip.experiment.validate import validate
from flip.federation.client_app import CONFIG_KEY, DIGEST_KEY, OPTIMIZER_STATE_KEY, app
from flip.federation.shipping import pack_config
from flip.federation.strategy import WITHHELD
from flip.federation.trust import SiteRefusal
from flip.training import build_datamodule, build_model
from tests.conftest import FAST_OVERRIDES, in_memory_grid, site_node_context

SIM = [*FAST_OVERRIDES, "federation.num_sites=2", "federation.server_eval_site=null"]
ALLOWED_METRICS = ("train/", "val/", "test/", "privacy/")
ALLOWED_PLAIN = {"num-examples", "train_loss", "dp-weight"}


def site_call(monkeypatch, cfg, message_type: str, index: int = 0, context: Context | None = None, server_round: int = 1) -> Message:
    """One instruction through flip's real ClientApp, as Flower delivers it to site `index`."""
    in_memory_grid(monkeypatch, 1)
    if context is None:
        context = site_node_context(cfg, index, Path(tempfile.mkdtemp(prefix="flip-site-")))
    text, digest = pack_config(cfg)
    config = ConfigRecord({CONFIG_KEY: text, DIGEST_KEY: digest, "server-round": server_round})
    arrays = ArrayRecord(build_model(cfg).state_dict())
    message = Message(RecordDict({"arrays": arrays, "config": config}), dst_node_id=1, message_type=message_type)
    return app(message, context)


def data_root(cfg) -> Path:
    return build_datamodule(cfg).resolve_root()


def every_string(content: RecordDict) -> list[str]:
    """Every record name, key and string value a reply carries."""
    found = []
    for name, record in content.items():
        found.append(name)
        for key, value in record.items():
            found.append(key)
            values = value if isinstance(value, list) else [value]
            found += [v for v in values if isinstance(v, str)]
    return found


def identifiers(cfg) -> set[str]:
    """Patient ids, SOP instance UIDs and file names of the site's data."""
    root = data_root(cfg) / "site-1"
    rows = list(csv.DictReader((root / "labels.csv").open()))
    found = {row[column] for row in rows for column in row if column in ("PatientID", "SOPInstanceUID")}
    return found | {path.name for path in root.rglob("*") if path.is_file()}


@pytest.fixture(scope="module")
def cfg():
    return validate(resolve_recipe("dicom_synthetic_fedavg"), SIM)


def test_a_training_reply_carries_weights_and_aggregates_only(monkeypatch, cfg):
    reply = site_call(monkeypatch, cfg, MessageType.TRAIN)
    assert not reply.has_error(), reply.error
    content = reply.content
    assert set(content.keys()) == {"arrays", "metrics", "site"}
    assert list(content["arrays"].keys()) == list(build_model(cfg).state_dict())
    for key in content["metrics"].keys():
        assert key in ALLOWED_PLAIN or key.startswith(ALLOWED_METRICS), key
    strings = every_string(content)
    root = str(data_root(cfg))
    assert not any(root in s or s.startswith(("/", "~")) or s.endswith(".dcm") for s in strings)
    leaked = identifiers(cfg) & set(strings)
    assert not leaked and len(identifiers(cfg)) > 40


def test_an_evaluation_reply_carries_split_aggregates_only(monkeypatch, cfg):
    reply = site_call(monkeypatch, cfg, MessageType.EVALUATE)
    assert not reply.has_error(), reply.error
    assert "arrays" not in reply.content
    metrics = dict(reply.content["metrics"].items())
    assert metrics["val/n"] >= 1 and all(isinstance(v, float | int) for v in metrics.values())
    assert not identifiers(cfg) & set(every_string(reply.content))


def test_a_cohort_below_k_sends_nothing_but_the_reason(monkeypatch, cfg):
    strict = validate(resolve_recipe("dicom_synthetic_fedavg"), [*SIM, "+federation.sites.site-1.policy.min_cohort=1000"])
    for message_type in (MessageType.TRAIN, MessageType.EVALUATE):
        reply = site_call(monkeypatch, strict, message_type)
        assert set(reply.content.keys()) == {WITHHELD}
        assert "fewer than the site's policy.min_cohort=1000" in reply.content[WITHHELD]["reason"]


def test_small_label_counts_are_left_out_of_the_site_record(monkeypatch, cfg):
    counts = dict(zip(*(site_call(monkeypatch, cfg, MessageType.TRAIN).content["site"][k] for k in ("label_keys", "label_counts"))))
    k = min(counts.values()) + 1
    strict = validate(resolve_recipe("dicom_synthetic_fedavg"), [*SIM, f"+federation.sites.site-1.policy.min_cohort={k}"])
    reply = site_call(monkeypatch, strict, MessageType.TRAIN)
    assert not reply.has_error(), reply.error
    kept = dict(zip(reply.content["site"]["label_keys"], reply.content["site"]["label_counts"]))
    assert kept == {label: n for label, n in counts.items() if n >= k} and len(kept) < len(counts)


def test_a_site_refuses_before_reading_its_data(monkeypatch, cfg, tmp_path):
    sites_file = tmp_path / "sites.yaml"
    sites_file.write_text("site-1:\n  data: {root: /nonexistent/never-read}\n  policy: {require_dp: true}\n")
    strict = validate(resolve_recipe("dicom_synthetic_fedavg"), [*SIM, f"federation.sites_file={sites_file}"])
    # Flower's runtime turns the exception into the error reply the server reports.
    with pytest.raises(SiteRefusal) as refusal:
        site_call(monkeypatch, strict, MessageType.TRAIN)
    assert str(refusal.value) == "site-1 refuses this run: policy.require_dp: this site requires differential privacy, the run uses no DP"


def test_a_kept_optimizer_state_stays_in_the_sites_own_state(monkeypatch, tmp_path):
    kept_cfg = validate(resolve_recipe("dicom_synthetic_fedavg"), [*SIM, "federation.keep_optimizer_state=true"])
    context = site_node_context(kept_cfg, 0, tmp_path)
    first = site_call(monkeypatch, kept_cfg, MessageType.TRAIN, context=context)
    assert not first.has_error(), first.error
    assert set(first.content.keys()) == {"arrays", "metrics", "site"}
    assert OPTIMIZER_STATE_KEY in context.state  # kept by Flower for this node's next message
    carried = site_call(monkeypatch, kept_cfg, MessageType.TRAIN, context=context, server_round=2)
    fresh = site_call(monkeypatch, kept_cfg, MessageType.TRAIN, server_round=2)
    carried_weights, fresh_weights = (reply.content["arrays"].to_torch_state_dict() for reply in (carried, fresh))
    assert any(not carried_weights[key].equal(fresh_weights[key]) for key in fresh_weights)
