"""SecAgg+ through flip's adapter, on Flower's simulation runtime: a Message-API FedAvg gets the
secure weighted mean, the server never holds one site's weights, dropouts are recovered, too few
live sites fail every reply clearly, and two simulations give the same bytes."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from flip.privacy.mechanisms.secagg import SecAggConfig
from flip.federation.simulation import flower_sandbox
from flip.privacy.secagg import SecAggPlusGrid, build_workflow, is_secagg_message, named_aggregate, secagg_train

NUM_SITES = 4
SETTINGS = {"max_weight": 100.0}
CLIP, LEVELS = SecAggConfig.clipping_range, SecAggConfig.quantization_range
STEP = 2 * CLIP / LEVELS  # one quantisation level
FAIL_SITE, WITHHOLD_SITE = 2, 0


def site_arrays(site: int) -> dict[str, np.ndarray]:
    """What site `site` trains to: fixed per site, several dtypes and a 0-d integer buffer."""
    rng = np.random.default_rng(1000 + site)
    return {
        "layer.weight": rng.uniform(-3, 3, (6, 5)).astype(np.float32),
        "layer.bias": (rng.uniform(-1, 1, 5) + site).astype(np.float32),
        "scale": rng.normal(size=3),
        "bn.num_batches_tracked": np.array(site + 1, dtype=np.int64),
    }


def site_weight(site: int) -> int:
    return 10 * (site + 1)


GLOBAL = {name: np.zeros_like(value) for name, value in site_arrays(0).items()}


# ------------------------------------------------------------------- the apps


def site_train(message: Message, context: Context) -> Message:
    """flip-style train: named arrays in, named arrays + num-examples + a site record out."""
    site = int(context.node_config["partition-id"])
    config = message.content["config"]
    if site == config.get("refuse-site", -1):
        return Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, f"site {site} refuses"), reply_to=message)
    if site == config.get("raise-site", -1):
        raise RuntimeError(f"site {site} crashed")
    if site == config.get("withhold-site", -1):  # like flip's min_cohort: a reason, no update
        return Message(RecordDict({"withheld": ConfigRecord({"reason": "cohort too small"})}), reply_to=message)
    assert list(message.content["arrays"].keys()) == list(GLOBAL), "names lost on the way"
    metrics = {"num-examples": site_weight(site), "site-id": float(site)}
    if config.get("uniform", False):
        metrics["secagg-weight"] = 1.0
    arrays = ArrayRecord({name: Array(value) for name, value in site_arrays(site).items()})
    content = RecordDict({"arrays": arrays, "metrics": MetricRecord(metrics), "site": ConfigRecord({"partition-id": site})})
    return Message(content, reply_to=message)


client_app = ClientApp()


@client_app.train()
def train(message: Message, context: Context) -> Message:
    if is_secagg_message(message):
        return secagg_train(message, context, site_train)
    return site_train(message, context)


class InnerGrid:
    """The simulation's grid, keeping every reply the SecAgg+ workflow received."""

    def __init__(self, grid: Grid):
        self._grid = grid
        self.replies: list[Message] = []

    def send_and_receive(self, messages, timeout=None):
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        self.replies += replies
        return replies

    def __getattr__(self, name):
        return getattr(self._grid, name)


class RecordingFedAvg(FedAvg):
    """FedAvg that keeps the replies it aggregated, as plain data."""

    replies: list[dict]

    def aggregate_train(self, server_round, replies):
        replies = list(replies)
        self.replies = [plain_reply(reply) for reply in replies]
        return super().aggregate_train(server_round, replies)


def plain_reply(reply: Message) -> dict:
    node = reply.metadata.src_node_id
    if reply.has_error():
        return {"node": node, "error": reply.error.reason}
    content = reply.content
    return {
        "node": node,
        "arrays": {name: array.numpy() for name, array in content["arrays"].items()},
        "metrics": dict(content["metrics"]),
        "site": dict(content["site"]),
    }


def secure_round(grid: Grid, settings: dict, config: dict) -> dict:
    inner = InnerGrid(grid)
    strategy = RecordingFedAvg(fraction_evaluate=0.0, min_train_nodes=NUM_SITES, min_available_nodes=NUM_SITES)
    result = strategy.start(
        grid=SecAggPlusGrid(inner, {**SETTINGS, **settings}, seed="7", timeout=None),
        initial_arrays=ArrayRecord({name: Array(value) for name, value in GLOBAL.items()}),
        num_rounds=1,
        timeout=120,
        train_config=ConfigRecord(config),
    )
    return {
        "replies": strategy.replies,
        "result": {name: array.numpy() for name, array in result.arrays.items()},
        "inner_array_entries": sum(len(r) for m in inner.replies if m.has_content() for r in m.content.array_records.values()),
        "inner_replies": len(inner.replies),
    }


def simulate(scenarios: dict[str, tuple[dict, dict]]) -> dict[str, dict]:
    """Run each scenario as one FedAvg round, in order, in one simulation of NUM_SITES sites."""
    from flwr.simulation import run_simulation

    out: dict[str, dict] = {}
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        for name, (settings, config) in scenarios.items():
            out[name] = secure_round(grid, settings, config)

    with flower_sandbox() as scratch:
        run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=NUM_SITES,
            backend_config={
                "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                "init_args": {"num_cpus": 2, "include_dashboard": False, "log_to_driver": False, "_temp_dir": str(scratch / "ray")},
            },
        )
    assert set(out) == set(scenarios), "the server app stopped early (see the log)"
    return out


SCENARIOS = {
    "all": ({}, {}),
    "dropout": ({}, {"refuse-site": FAIL_SITE, "withhold-site": WITHHOLD_SITE, "uniform": True}),
    "too_few": ({"reconstruction_threshold": NUM_SITES}, {"raise-site": FAIL_SITE}),
}


@pytest.fixture(scope="module")
def runs() -> dict[str, dict]:
    return simulate(SCENARIOS)


# ------------------------------------------------------------------- checks


def expected_mean(sites: list[int], weights: list[float]) -> dict[str, np.ndarray]:
    total = sum(weights)
    return {
        name: sum(site_arrays(s)[name].astype(np.float64) * w for s, w in zip(sites, weights)) / total
        for name in GLOBAL
    }


def assert_secure_mean(replies: list[dict], sites: list[int], weights: list[float]) -> None:
    """Each site's reply carries the same arrays: the weighted mean, within the quantisation error."""
    ok = [r for r in replies if "arrays" in r]
    assert sorted(r["site"]["partition-id"] for r in ok) == sites
    for reply in ok:  # every site keeps its own metrics
        site = reply["site"]["partition-id"]
        assert reply["metrics"]["site-id"] == site and reply["metrics"]["num-examples"] == site_weight(site)
    first = ok[0]["arrays"]
    for reply in ok[1:]:
        assert all(reply["arrays"][n].tobytes() == first[n].tobytes() for n in GLOBAL)
    # Each site's update is weighted by w/max_weight before it is rounded to one level (STEP).
    tolerance = 2 * len(sites) * STEP * SETTINGS["max_weight"] / sum(weights)
    for name, mean in expected_mean(sites, weights).items():
        got = first[name]
        assert got.dtype == GLOBAL[name].dtype and got.shape == GLOBAL[name].shape, name
        if np.issubdtype(got.dtype, np.integer):
            assert got == np.rint(mean), name
        else:
            np.testing.assert_allclose(got, mean, rtol=0, atol=tolerance, err_msg=name)


@pytest.mark.slow
def test_fedavg_gets_the_secure_weighted_mean_and_never_a_site_update(runs):
    run = runs["all"]
    sites = list(range(NUM_SITES))
    assert_secure_mean(run["replies"], sites, [site_weight(s) for s in sites])
    assert run["inner_replies"] == 4 * NUM_SITES  # four SecAgg+ stages
    assert run["inner_array_entries"] == 0  # the workflow only ever received masked vectors
    aggregate = run["replies"][0]["arrays"]
    for name, value in run["result"].items():
        np.testing.assert_allclose(value, aggregate[name], rtol=1e-6)


@pytest.mark.slow
def test_sites_that_drop_out_are_errors_and_the_rest_are_still_aggregated(runs):
    replies = runs["dropout"]["replies"]
    errors = sorted(r["error"] for r in replies if "error" in r)
    assert len(errors) == 2
    assert errors[0] == f"site {FAIL_SITE} refuses"
    assert errors[1] == "the site sent no update (cohort too small), so it leaves this SecAgg+ round"
    survivors = [s for s in range(NUM_SITES) if s not in (FAIL_SITE, WITHHOLD_SITE)]
    assert_secure_mean(replies, survivors, [1.0] * len(survivors))  # secagg-weight overrides num-examples


@pytest.mark.slow
def test_fewer_live_sites_than_the_threshold_fails_every_reply(runs):
    run = runs["too_few"]
    replies = run["replies"]
    assert len(replies) == NUM_SITES and all("error" in r for r in replies)
    crashed = [r for r in replies if f"site {FAIL_SITE} crashed" in r["error"]]
    halted = [r for r in replies if "SecAgg+ halted in round 1 at stage 'collect_masked_vectors'" in r["error"]]
    assert len(crashed) == 1 and len(halted) == NUM_SITES - 1
    assert "3 of 4 sampled site(s)" in halted[0]["error"] and "reconstruction_threshold" in halted[0]["error"]
    assert run["result"] == {}  # no round was aggregated


@pytest.mark.slow
def test_two_simulations_give_the_same_bytes(runs):
    again = simulate({name: SCENARIOS[name] for name in ("all", "dropout")})
    for name in ("all", "dropout"):
        first = next(r for r in runs[name]["replies"] if "arrays" in r)["arrays"]
        second = next(r for r in again[name]["replies"] if "arrays" in r)["arrays"]
        assert all(first[n].tobytes() == second[n].tobytes() for n in GLOBAL), name


# ------------------------------------------------------------------- no simulation needed


def test_settings_are_checked_before_the_run():
    assert build_workflow({}).num_shares == 1.0  # null: one share per sampled site
    with pytest.raises(ValueError, match="at least 2"):
        build_workflow({"reconstruction_threshold": 1})
    with pytest.raises(ValueError, match="unknown SecAgg"):
        build_workflow({"threshold": 3})
    with pytest.raises(ValueError, match="less than `num_shares`"):
        build_workflow({"num_shares": 3, "reconstruction_threshold": 3})


def test_the_aggregate_gets_back_names_shapes_and_dtypes():
    sent = ArrayRecord({name: Array(value) for name, value in GLOBAL.items()})
    aggregate = [np.full(value.shape, 2.6) for value in GLOBAL.values()]
    named = named_aggregate(aggregate, sent)
    assert list(named) == list(GLOBAL)
    for name, value in GLOBAL.items():
        assert named[name].numpy().dtype == value.dtype and named[name].numpy().shape == value.shape
    assert named["bn.num_batches_tracked"].numpy() == 3
    with pytest.raises(ValueError, match="shape"):
        named_aggregate([np.zeros(2)] + aggregate[1:], sent)
