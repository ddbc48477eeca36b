"""flip's Flower ServerApp: maps nodes to sites, then runs the configured strategy."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Result
from omegaconf import DictConfig

from flip.audit.checkpoints import evaluated_weights, fit_problems
from flip.audit.manifest import file_sha256
from flip.config.allowlist import AllowList
from flip.config.schema import job_of
from flip.errors import ConfigError, FlipError
from flip.federation.evaluation import EVALUATED, evaluate_everywhere, run_cross_site
from flip.federation.client_app import CONFIG_KEY, DIGEST_KEY, INITIAL_MODEL_KEY, MODEL_KEY, PROTOCOL, PROTOCOL_KEY
from flip.federation.keeper import RoundKeeper
from flip.federation.resume import ResumePoint, checkpoint_weights, restore_keeper, restore_strategy, save_point
from flip.federation.shipping import pack_config
from flip.federation.strategy import FlipSettings, SiteGrid, build_flip_strategy, error_summary
from flip.privacy.accounting import PrivacyBudgetSpent
from flip.privacy.plan import UNIFORM_WEIGHT, PrivacyPlan

log = logging.getLogger(__name__)


@dataclass
class ServerOutcome:
    keeper: RoundKeeper | None = None
    result: Result | None = None
    # Why the run ended before its last round (the privacy budget), if it did.
    stop_reason: str | None = None
    # The flip version each site runs, by site name (from the handshake).
    site_versions: dict[str, str] = field(default_factory=dict)


@dataclass
class SiteAnswers:
    """What the handshake established: which site each node serves (its index in the run's
    site names), and the run's starting model."""

    node_to_site: dict[int, int]
    initial_arrays: ArrayRecord
    hparams: dict[str, Any]
    versions: dict[str, str] = field(default_factory=dict)


@dataclass
class Handshake:
    """The server's question to every site: which site is this node, and does it accept the run?

    Each node answers with its site's own name (from its own settings), so a site's identity never
    depends on the order nodes connect in.

    `announce` sends it and returns at once, so the sites check the config and their policy, and
    load their training code, while the server prepares its own side; `answers` collects them.
    The first node is also asked for the initial model, which every site would build alike from
    the run's seed: so the server itself never loads Lightning unless it evaluates.
    """

    grid: Grid
    site_names: list[str]
    deadline: float
    pending: set[str]

    @classmethod
    def announce(cls, grid: Grid, site_names: list[str], timeout: float, shipped: dict[str, str]) -> Handshake:
        """Wait for a node per site, then send each the question, which carries the config."""
        num_sites = len(site_names)
        deadline = time.monotonic() + timeout
        while len(nodes := sorted(grid.get_node_ids())) < num_sites:
            if time.monotonic() > deadline:
                raise FlipError(f"only {len(nodes)} of {num_sites} sites connected within {timeout:.0f} s")
            time.sleep(0.1)
        queries = [
            Message(
                RecordDict({"config": ConfigRecord({**shipped, INITIAL_MODEL_KEY: node == nodes[0]})}),
                dst_node_id=node,
                message_type=MessageType.QUERY,
            )
            for node in nodes
        ]
        return cls(grid, list(site_names), deadline, set(grid.push_messages(queries)))

    def answers(self) -> SiteAnswers:
        """The sites' answers, once every site gave one; a clear error if any refused or stayed silent."""
        replies: list[Message] = []
        while True:  # pulls at least once: the answers may all be in by now
            arrived = list(self.grid.pull_messages(self.pending))
            replies += arrived
            self.pending -= {reply.metadata.reply_to_message_id for reply in arrived}
            if not self.pending or time.monotonic() > self.deadline:
                break
            time.sleep(0.05)
        mapping, problems, model, versions = {}, [], None, {}
        index_of = {name: index for index, name in enumerate(self.site_names)}
        enrolled = enrolled_names(self.grid)
        for reply in replies:
            if reply.has_error():
                problems.append(error_summary(reply.error.reason, lines=1))
                continue
            name = str(reply.content["site"]["name"])
            node = reply.metadata.src_node_id
            if enrolled.get(node, name) != name:
                problems.append(f"the node enrolled as site '{enrolled[node]}' answered as site '{name}'")
            elif name not in index_of:
                problems.append(f"a node answered as site '{name}', which is not one of this run's sites ({', '.join(self.site_names)})")
            elif index_of[name] in mapping.values():
                problems.append(f"two nodes answered as site '{name}'")
            else:
                mapping[node] = index_of[name]
                versions[name] = str(reply.content["site"].get("flip-version", "?"))
            if MODEL_KEY in reply.content:
                model = reply.content["arrays"], json.loads(str(reply.content[MODEL_KEY]["hparams"]))
        if model is None and not problems:
            problems.append("the first site sent no initial model")
        missing = [name for name, index in index_of.items() if index not in mapping.values()]
        if problems or missing:
            silent = f"no answer from {', '.join(missing)}; " if missing else ""
            raise FlipError(f"site handshake failed: {silent}{'; '.join(problems)}".rstrip("; "))
        return SiteAnswers(mapping, *model, versions)


def serve(
    grid: Grid,
    cfg: DictConfig,
    site_names: list[str],
    prepare: Callable[[], RoundKeeper],
    outcome: ServerOutcome,
    resume: ResumePoint | None = None,
    packed: tuple[str, str] | None = None,
    checkpoint: Path | None = None,
) -> None:
    """A federated run across the sites `site_names`, on any grid (a simulation's or a deployment's).

    `prepare` builds the server's own side (its records, shared inputs) while the sites answer
    the handshake. With `resume`, the run continues after that round of an earlier run.
    `packed` is the config as sites receive it (text, sha256), when the server received it so.
    With `job=evaluate`, the model in `checkpoint` is evaluated at every site instead of training.
    """
    federation = cfg.federation
    text, digest = packed or pack_config(cfg)
    shipped = {CONFIG_KEY: text, DIGEST_KEY: digest}
    timeout = float(federation.get("connect_timeout", federation.round_timeout))
    handshake = Handshake.announce(grid, site_names, timeout, {**shipped, PROTOCOL_KEY: PROTOCOL})
    outcome.keeper = keeper = prepare()
    answers = handshake.answers()
    outcome.site_versions = answers.versions
    keeper.hparams = answers.hparams
    keeper.site_names = list(site_names)
    timeout = float(federation.round_timeout)
    if job_of(cfg) == "evaluate":
        evaluate_checkpoint(grid, answers.node_to_site, keeper, checkpoint, answers.initial_arrays, shipped, timeout)
        return
    keeper.keep_site_models = bool(cfg.evaluation.cross_site)
    plan = PrivacyPlan.from_config(cfg)
    offset = resume.round if resume is not None else 0
    settings = FlipSettings(
        cfg.seed, federation.min_successful_sites, keeper, float(federation.get("rejoin_timeout", 0.0)), round_offset=offset
    )
    weighting = {"weighted_by_key": UNIFORM_WEIGHT} if plan.uniform_weights else {}
    flip_strategy = build_flip_strategy(cfg.strategy, AllowList.of(cfg.allowed_targets), settings, **weighting)
    strategy = plan.wrap_strategy(flip_strategy)
    initial = answers.initial_arrays
    if resume is not None:
        restore_keeper(keeper, resume)
        restore_strategy(flip_strategy, resume.strategy)
        initial = ArrayRecord(checkpoint_weights(resume))
        log.info("resuming after round %d of %d", offset, federation.num_rounds)

    def end_round(server_round: int, arrays: ArrayRecord) -> None:
        if server_round == 0 and offset:
            keeper.resume_at(offset, arrays)
            return
        keeper.end_round(server_round + offset, arrays)
        if server_round > 0:
            save_point(keeper.run_directory, keeper, flip_strategy, server_round + offset)

    try:
        outcome.result = strategy.start(
            grid=SiteGrid(plan.wrap_grid(grid, federation.round_timeout), answers.node_to_site, settings),
            initial_arrays=initial,
            num_rounds=federation.num_rounds - offset,
            timeout=federation.round_timeout,
            train_config=ConfigRecord(dict(shipped)),
            evaluate_config=ConfigRecord(dict(shipped)),
            evaluate_fn=end_round,
        )
    except PrivacyBudgetSpent as stop:
        log.warning("%s", stop)
        outcome.stop_reason = str(stop)
    if cfg.evaluation.cross_site and keeper.last_state is not None and keeper.last_round > 0:
        save = partial(save_site_model, keeper)
        server_name = federation.get("server_eval_site")
        final = ArrayRecord(keeper.last_state)
        keeper.cross_site = run_cross_site(grid, answers.node_to_site, keeper, final, shipped, timeout, server_name, save)


def save_site_model(keeper: RoundKeeper, name: str, state: dict) -> None:
    keeper.run_directory.save_site_model(name, state, keeper.hparams, keeper.last_round)


def evaluate_checkpoint(
    grid: Grid,
    node_to_site: dict[int, int],
    keeper: RoundKeeper,
    checkpoint: Path | None,
    initial: ArrayRecord,
    shipped: dict[str, Any],
    timeout: float,
) -> None:
    """job=evaluate: the checkpoint's model, once it fits the model the sites build, evaluated at
    every site (and by the server on its own data); its metrics are the run's round 0."""
    import torch  # noqa: F401

    if checkpoint is None:
        raise ConfigError(["evaluation.checkpoint: job=evaluate needs the model to evaluate"])
    file, state = evaluated_weights(checkpoint)
    if problems := fit_problems(state, initial.to_torch_state_dict(), file):
        raise ConfigError(problems)
    arrays = ArrayRecord(state)
    log.info("evaluating %s at %d sites", file, len(node_to_site))
    found = evaluate_everywhere(grid, node_to_site, keeper, {EVALUATED: arrays}, shipped, 0, timeout, phase="evaluate")
    keeper.evaluate_replies(0, found.replies.get(EVALUATED, []))
    keeper.end_round(0, arrays)
    keeper.evaluated = {"checkpoint": str(file), "file_sha256": file_sha256(file)}


def enrolled_names(grid: Grid) -> dict[int, str]:
    """Node id -> the name its key was enrolled under (`flip server register-site`), for the nodes
    online that have one; empty on grids without enrolment (a simulation's)."""
    try:
        return {int(node.node_id): str(node.name) for node in grid.get_nodes() if getattr(node, "name", "")}
    except (AttributeError, NotImplementedError):
        return {}


def build_server_app(
    cfg: DictConfig,
    site_names: list[str],
    prepare: Callable[[], RoundKeeper],
    outcome: ServerOutcome,
    resume: ResumePoint | None = None,
    checkpoint: Path | None = None,
) -> ServerApp:
    """A simulation's ServerApp: `serve` with the driver's own state (its progress display and
    records). Flower's `run_simulation` takes no run config, so this adapter hands it over;
    a deployment runs the module-level `app` below, which reads everything from its run config."""
    simulation_app = ServerApp()

    @simulation_app.main()
    def main(grid: Grid, context: Context) -> None:
        serve(grid, cfg, site_names, prepare, outcome, resume, checkpoint=checkpoint)

    return simulation_app


app = ServerApp()


@app.main()
def deployment_main(grid: Grid, context: Context) -> None:
    """The ServerApp of a deployment (flwr-serverapp loads it by reference, `flip.federation.server_app:app`):
    the config, recipe and resume point come in the run config, the run directory goes into the
    server's runs folder (`flip.federation.deployment.server_run`)."""
    from flip.federation.deployment.server_run import serve_run

    serve_run(grid, context)
