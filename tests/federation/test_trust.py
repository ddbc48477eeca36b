"""What a site trusts: hostile configs are refused with the rule they break, nothing they name is
ever called, a site's own settings win, approvals go by config hash, and a site has one name."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

from flip.experiment.recipes import resolve_recipe
from flip.experiment.validate import validate
from flip.federation.client_app import CONFIG_KEY, DIGEST_KEY
from flip.federation.shipping import config_digest, pack_config
from flip.federation.site_config import SIMULATION_SITES_ENV, SiteSettings, site_run_config
from flip.federation.strategy import error_summary
from flip.federation.trust import SiteRefusal, accept_run
from tests.conftest import FAST_OVERRIDES, simulated_sites
from tests.federation.hostile_configs import HOSTILE, PATTERN_SITE, Hostile

SIM = [*FAST_OVERRIDES, "federation.num_sites=2", "federation.num_rounds=1", "federation.server_eval_site=null"]
# The second site's own settings trust every class flip defines (a package pattern).
PATTERN = "+federation.sites.site-2={allowed_targets: ['flip.*']}"


@pytest.fixture(scope="module")
def cfg():
    return validate(resolve_recipe("dicom_synthetic_fedavg"), [*SIM, PATTERN])


@pytest.fixture(scope="module")
def sites(cfg) -> list[SiteSettings]:
    return [SiteSettings.from_mapping(raw, raw["name"]) for raw in simulated_sites(cfg)]


def refusal_of(case: Hostile, cfg, sites, sentinel: Path) -> SiteRefusal:
    text = case.sent(pack_config(cfg)[0], sentinel)
    with pytest.raises(SiteRefusal) as caught:
        accept_run(text, hashlib.sha256(text.encode()).hexdigest(), sites[case.site])
    return caught.value


# ---------------------------------------------------------------- the hostile corpus, site by site


def test_the_corpus_is_large_and_varied():
    assert len(HOSTILE) >= 20 and len({case.id for case in HOSTILE}) == len(HOSTILE)
    rules = {fragment for case in HOSTILE for fragment in case.expect if fragment.startswith("(rule:")}
    assert len(rules) == 6, rules


@pytest.mark.parametrize("case", HOSTILE, ids=lambda case: case.id)
def test_a_site_refuses_each_hostile_config_naming_the_rule(case, cfg, sites, tmp_path):
    refusal = refusal_of(case, cfg, sites, tmp_path)
    message = str(refusal)
    assert message.startswith(f"{sites[case.site].name} refuses this run: ")
    for fragment in case.expect:
        assert fragment in message, message
    assert not list(tmp_path.iterdir())


def test_the_sender_cannot_widen_what_the_site_trusts(cfg, sites):
    """The same hostile target passes at a site that lists it itself, and only there."""
    shipped = json.loads(pack_config(cfg)[0])
    shipped["model"]["scheduler"] = {"_target_": "torch.optim.lr_scheduler.StepLR", "_partial_": True, "step_size": 1}
    text = json.dumps(shipped)
    digest = hashlib.sha256(text.encode()).hexdigest()
    assert accept_run(text, digest, sites[0]).cfg.model.scheduler._target_ == "torch.optim.lr_scheduler.StepLR"
    shipped["model"]["scheduler"] = {"_target_": "flip.results.write_json", "_partial_": True}
    text = json.dumps(shipped)
    digest = hashlib.sha256(text.encode()).hexdigest()
    trusting = SiteSettings.from_mapping({"name": "site-1", "allowed_targets": ["flip.results.write_json"]}, "site-1")
    assert accept_run(text, digest, trusting).cfg.model.scheduler._target_ == "flip.results.write_json"
    with pytest.raises(SiteRefusal, match="is a function, not a learning-rate scheduler class"):
        accept_run(text, digest, sites[PATTERN_SITE])


# ---------------------------------------------------------------- site-owned settings and approvals


def test_a_sites_own_data_settings_win_over_the_recipes(cfg, tmp_path):
    recipe = validate(resolve_recipe("dicom_synthetic_fedavg"), [*SIM, "data.root=/recipe/path", "data.cache_dir=/recipe/cache"])
    shipped = json.loads(pack_config(recipe)[0])
    assert shipped["data"]["root"] is None and shipped["data"]["cache_dir"] is None
    own = SiteSettings.from_mapping({"name": "hospital-b", "data": {"root": str(tmp_path), "min_samples": 3}}, "hospital-b")
    ran = site_run_config(shipped, own)
    assert ran["data"]["root"] == str(tmp_path) and ran["data"]["min_samples"] == 3
    assert ran["data"]["synthetic"] is None  # a root of its own: nothing is generated on the sender's behalf
    assert ran["data"]["cache_dir"] is None and ran["allowed_targets"] == []


def test_the_shipped_hash_names_the_experiment_not_the_machine():
    recipe = resolve_recipe("dicom_synthetic_fedavg")
    base = config_digest(validate(recipe, SIM))
    elsewhere = [*SIM, "data.root=/elsewhere", "allowed_targets=[mylab.Net]", "+federation.sites.site-1={cpus: 2}"]
    assert config_digest(validate(recipe, elsewhere)) == base
    assert config_digest(validate(recipe, [*SIM, "seed=7"])) != base


def test_an_unapproved_hash_is_refused_with_the_hash_and_an_approved_one_runs(cfg, sites):
    text, digest = pack_config(cfg)
    other = "0" * 64
    strict = SiteSettings.from_mapping({"name": "site-1", "approve": [other]}, "site-1")
    with pytest.raises(SiteRefusal) as caught:
        accept_run(text, digest, strict)
    assert caught.value.problems == [
        f"approve: config sha256 {digest} is not one this site approved: send it to the site for approval "
        "(`flip show RECIPE [OVERRIDES] --hash` prints it) (rule: approval by config hash)"
    ]
    approving = SiteSettings.from_mapping({"name": "site-1", "approve": [other, digest]}, "site-1")
    assert accept_run(text, digest, approving).digest == digest


def test_flip_show_hash_prints_what_a_site_sees():
    done = subprocess.run([sys.executable, "-m", "flip.cli", "show", "dicom_synthetic_fedavg", *SIM, "--hash"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == pack_config(validate(resolve_recipe("dicom_synthetic_fedavg"), SIM))[1]


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"approve": "some"}, "site-x.approve: must be 'any' or a list of config sha256s (64 hex digits), got 'some'"),
        ({"allowed_targets": ["*"]}, "site-x.allowed_targets[0]: '*' is not an exact dotted name or a 'package.*' pattern"),
        ({"allowed_targets": ["os.*sys*"]}, "site-x.allowed_targets[0]: 'os.*sys*' is not an exact dotted name"),
        ({"polcy": {}}, "site-x.polcy: unknown key (did you mean 'policy'?)"),
        ({"cpus": 0}, "site-x.cpus: must be positive, got 0"),
        ({"policy": {"allowed_mechanisms": ["magic"]}}, "site-x.policy.allowed_mechanisms: 'magic' is not a privacy mechanism"),
    ],
)
def test_bad_site_settings_name_their_key(settings, expected):
    from flip.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        SiteSettings.from_mapping({"name": "site-x", **settings}, "site-x")
    assert any(problem.startswith(expected) for problem in caught.value.problems), caught.value.problems


# ---------------------------------------------------------------- end to end, in real simulations


def _hostile_server(cases: list[tuple[Hostile, str]], shipped: tuple[str, str], replies: dict) -> ServerApp:
    """A sender that skips flip's own checks: asks each node who it is with flip's config, then
    sends every hostile text, as a query (and the first one also as a training instruction)."""
    app = ServerApp()

    def message(node: int, text: str, digest: str, kind: str = MessageType.QUERY) -> Message:
        return Message(RecordDict({"config": ConfigRecord({CONFIG_KEY: text, DIGEST_KEY: digest})}), dst_node_id=node, message_type=kind)

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        deadline = time.monotonic() + 120
        while len(grid.get_node_ids()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        answers = grid.send_and_receive([message(node, *shipped) for node in grid.get_node_ids()], timeout=120)
        replies["names"] = {str(a.content["site"]["name"]): a.metadata.src_node_id for a in answers if not a.has_error()}
        node_of = [replies["names"][f"site-{index + 1}"] for index in range(2)]
        sent = [message(node_of[case.site], text, hashlib.sha256(text.encode()).hexdigest()) for case, text in cases]
        first_case, first_text = cases[0]
        sent.append(message(node_of[first_case.site], first_text, hashlib.sha256(first_text.encode()).hexdigest(), MessageType.TRAIN))
        for reply in grid.send_and_receive(sent, timeout=300):
            replies.setdefault("refusals", []).append(
                error_summary(reply.error.reason, lines=1) if reply.has_error() else "accepted"
            )

    return app


@pytest.mark.slow
def test_a_real_simulation_refuses_the_whole_corpus_and_calls_nothing(cfg, tmp_path):
    from flwr.simulation import run_simulation

    from flip.federation.client_app import app as client_app
    from flip.federation.simulated_sites import write_site_files
    from flip.federation.simulation import backend_config, flower_sandbox

    sentinel = tmp_path / "sentinel"
    sentinel.mkdir()
    shipped = pack_config(cfg)
    cases = [(case, case.sent(shipped[0], sentinel)) for case in HOSTILE]
    replies: dict = {}
    with flower_sandbox() as scratch:
        os.environ[SIMULATION_SITES_ENV] = str(write_site_files(scratch / "sites", simulated_sites(cfg)))
        run_simulation(_hostile_server(cases, shipped, replies), client_app, 2, backend_config=backend_config(cfg, scratch))
    assert sorted(replies["names"]) == ["site-1", "site-2"]
    refusals = replies["refusals"]
    assert len(refusals) == len(cases) + 1 and "accepted" not in refusals
    for case, _ in [*cases, cases[0]]:
        prefix = f"site-{case.site + 1} refuses this run: "
        matching = [r for r in refusals if r.startswith(prefix) and all(f in r for f in case.expect)]
        assert matching, (case.id, refusals)
    assert not list(sentinel.iterdir())


def flip_run(cwd: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flip.cli", "run", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env={**os.environ, **(env or {})})


@pytest.mark.slow
def test_the_recipes_own_allow_list_does_not_reach_the_sites_and_an_unapproved_site_shows_the_hash(tmp_path):
    """The researcher trusts a function on their own machine; the sites do not, and one site has
    not approved this run: the run stops in the handshake, each site saying why."""
    sentinel = tmp_path / "sentinel"
    sentinel.mkdir()
    overrides = [
        *SIM,
        "allowed_targets=[flip.results.write_json]",
        f"++model.scheduler={{_target_: flip.results.write_json, _partial_: true, path: {sentinel / 'owned.json'}, payload: {{a: 1}}}}",
        f"+federation.sites.site-2={{approve: [{'0' * 64}]}}",
    ]
    digest = config_digest(validate(resolve_recipe("dicom_synthetic_fedavg"), overrides))
    result = flip_run(tmp_path, "dicom_synthetic_fedavg", *overrides)
    assert result.returncode == 1, result.stderr[-3000:]
    assert (
        "site-1 refuses this run: model.scheduler._target_: 'flip.results.write_json' is not an allowed "
        "learning-rate scheduler" in result.stderr
    )
    assert f"site-2 refuses this run: approve: config sha256 {digest} is not one this site approved" in result.stderr
    assert not list(sentinel.iterdir())


EXTRA_COMPONENT = '''
import os

import torch


class MarkedStepLR(torch.optim.lr_scheduler.StepLR):
    """A scheduler outside flip's defaults that marks where it was built."""

    def __init__(self, optimizer, step_size=1, gamma=1.0):
        super().__init__(optimizer, step_size=step_size, gamma=gamma)
        open(os.path.join(os.environ["FLIP_TEST_MARKS"], f"built-{os.getpid()}"), "w").close()
'''


@pytest.mark.slow
def test_sites_that_list_a_component_use_it_and_a_sites_own_root_and_approval_hold(tmp_path):
    from flip.data.dicom.datamodule import DicomDataModule
    from flip.data.synthetic.dataset import write_synthetic_dicom

    extras, marks = tmp_path / "extras", tmp_path / "marks"
    extras.mkdir()
    marks.mkdir()
    (extras / "flip_site_extras.py").write_text(EXTRA_COMPONENT)
    own_root = write_synthetic_dicom(tmp_path / "hospital-a", num_sites=1, images_per_site=40, image_size=32, seed=7)
    component = "flip_site_extras.MarkedStepLR"
    overrides = [*SIM, f"allowed_targets=[{component}]", f"++model.scheduler={{_target_: {component}, _partial_: true}}"]
    digest = config_digest(validate(resolve_recipe("dicom_synthetic_fedavg"), overrides))
    sites_file = tmp_path / "sites.yaml"
    sites_file.write_text(
        f"site-1:\n  data: {{root: {own_root}}}\n  allowed_targets: [{component}]\n  approve: [{digest}]\n"
        f"site-2:\n  allowed_targets: [{component}]\n"
    )
    env = {"PYTHONPATH": os.pathsep.join([str(extras), os.environ.get("PYTHONPATH", "")]), "FLIP_TEST_MARKS": str(marks)}
    result = flip_run(tmp_path, "dicom_synthetic_fedavg", *overrides, f"federation.sites_file={sites_file}", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert list(marks.iterdir())  # the sites built the component they listed
    (summary_path,) = (tmp_path / "runs").rglob("summary.json")
    summary = json.loads(summary_path.read_text())
    reports = {site["site"]: site for site in summary["sites"]}
    own = DicomDataModule(min_samples=1, root=own_root, site="site-1", image_size=32)
    own.setup()
    assert reports["site-1"]["fingerprint"] == own.fingerprint and reports["site-1"]["found"] == own.num_items_found
    assert summary["failures"] == []


@pytest.mark.slow
def test_twelve_sites_each_keep_their_own_name_and_settings(tmp_path):
    """The issue's reproduction: site-2's own setting fails site-2, not site-10, and site-10's own
    policy holds back site-10's replies, not site-2's; every record uses the same names."""
    result = flip_run(
        tmp_path, "dicom_synthetic_fedavg", *FAST_OVERRIDES, "federation.num_sites=12", "data.synthetic.num_sites=12",
        "data.synthetic.images_per_site=20", "federation.num_rounds=1", "federation.server_eval_site=null",
        "+federation.sites.site-2={data: {min_samples: 1000}}", "+federation.sites.site-10={policy: {min_cohort: 1000}}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (summary_path,) = (tmp_path / "runs").rglob("summary.json")
    summary = json.loads(summary_path.read_text())
    assert {(f["site"], f["phase"]) for f in summary["failures"]} == {("site-2", "train"), ("site-2", "evaluate")}
    assert all("site site-2: " in f["error"] and "data.min_samples=1000" in f["error"] for f in summary["failures"])
    assert {(w["site"], w["phase"]) for w in summary["withheld"]} == {("site-10", "train"), ("site-10", "evaluate")}
    others = [f"site-{i}" for i in range(1, 13) if i not in (2, 10)]
    assert [site["site"] for site in summary["sites"]] == others
    with (summary_path.parent / "metrics.csv").open() as handle:
        named = {row["site"] for row in csv.DictReader(handle) if row["split"] == "train"}
    assert named == set(others)
