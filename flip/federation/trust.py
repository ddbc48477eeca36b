"""What a site accepts: a received config, checked against the site's own settings before any
data is read and before anything is built.

In order: the site's approval of the config's hash, the text being inert and intact
(`unpack_config`), nothing in it that belongs to the site, then the config the site would run
(the received one under the site's own settings): its schemas, cross-group rules, every
`_target_` resolved against the site's own allow-list, and the site's privacy policy. A refusal
names the site and lists every problem, each with its key and rule.
"""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf

from flip.config.allowlist import AllowList, target_problems
from flip.experiment.rules import rule_problems
from flip.config.schema import SCHEMA_MARKER
from flip.config.checks import strip_markers
from flip.experiment.catalog import GROUPS, SCHEMAS
from flip.experiment.validate import schema_problems
from flip.errors import ConfigError, FlipError
from flip.federation.shipping import DATA_NODES, unpack_config
from flip.federation.site_config import SiteSettings, site_run_config
from flip.privacy.plan import PrivacyPlan
from flip.privacy.policy import sharing_refusals, policy_refusals

RULE_APPROVAL = "rule: approval by config hash"


class SiteRefusal(FlipError):
    """A site refuses a run: the config it received, or its own policy, does not allow it.

    One line (it travels in Flower's error reply), its problems joined by '; '.
    """

    def __init__(self, site: str, problems: list[str]):
        self.site = site
        self.problems = list(problems)
        super().__init__(f"{site} refuses this run: {'; '.join(self.problems)}")


@dataclass(frozen=True)
class AcceptedRun:
    """A run a site has checked and agreed to serve: the config it runs, and its own settings."""

    cfg: DictConfig
    site: SiteSettings
    plan: PrivacyPlan
    digest: str


_ACCEPTED: dict[tuple[str, str], AcceptedRun] = {}


def refusal(site: SiteSettings, problems: list[str]) -> SiteRefusal:
    return SiteRefusal(site.name, problems)


def approval_problems(digest: str, site: SiteSettings) -> list[str]:
    if site.approved is None or digest in site.approved:
        return []
    return [
        f"approve: config sha256 {digest} is not one this site approved: send it to the site for "
        f"approval (`flip show RECIPE [OVERRIDES] --hash` prints it) ({RULE_APPROVAL})"
    ]


def marker_problems(node: object, path: str = "") -> list[str]:
    """Schema names the sender marked nodes with (which the site checks those nodes against):
    `root` at the top, `<group>/<option>` on each config group (and `data/<option>` on a join's
    modalities), nowhere else."""
    problems = []
    if isinstance(node, dict):
        marker = node.get(SCHEMA_MARKER)
        group = path if path in GROUPS else "data" if path in DATA_NODES else None
        if path == "":
            fits = marker == "root"
        elif group is not None:  # a config group, or a multimodal join's modality (a data option)
            fits = marker is None and path != group or isinstance(marker, str) and marker in SCHEMAS and marker.startswith(f"{group}/")
        else:
            fits = marker is None
        if not fits:
            problems.append(f"{_join(path, SCHEMA_MARKER)}: {marker!r} is not a schema for this node (rule: schemas)")
        for key, value in node.items():
            problems += marker_problems(value, _join(path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            problems += marker_problems(value, f"{path}[{index}]")
    return problems


def _join(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


def run_problems(marked: dict, site: SiteSettings) -> tuple[DictConfig | None, list[str]]:
    """The config a site would run, and its schema, allow-list and rule problems."""
    plain = strip_markers(marked)
    problems = marker_problems(marked)
    problems += schema_problems(marked) if not problems else []  # the markers say which schema applies
    problems += target_problems(plain, AllowList.of(site.allowed_targets), resolve=True)
    if problems:
        return None, problems
    cfg = OmegaConf.create(plain)
    return cfg, rule_problems(cfg)


def accept_run(text: str, digest: str, site: SiteSettings) -> AcceptedRun:
    """The run `site` agrees to serve, or SiteRefusal naming every rule it breaks (cached per
    config hash and settings, so each message of an accepted run is checked once per process)."""
    key = (digest, site.fingerprint)
    if key in _ACCEPTED:
        return _ACCEPTED[key]
    if problems := approval_problems(digest, site):
        raise refusal(site, problems)
    try:
        received = unpack_config(text, digest)
    except ConfigError as error:
        raise refusal(site, error.problems) from None
    cfg, problems = run_problems(site_run_config(received, site), site)
    if problems:
        raise refusal(site, problems)
    plan = PrivacyPlan.from_config(cfg)
    problems = policy_refusals(site.policy, plan, int(cfg.federation.num_rounds))
    if problems := problems + sharing_refusals(site.policy, bool(cfg.evaluation.cross_site)):
        raise refusal(site, problems)
    _ACCEPTED[key] = accepted = AcceptedRun(cfg, site, plan, digest)
    return accepted
