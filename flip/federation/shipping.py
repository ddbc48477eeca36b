"""The run's config travels to sites as one canonical JSON text plus its sha256.

What is sent holds nothing a site owns: the researcher's allow-list, the simulated sites'
settings and the data paths are left out (`null`), so the hash is the same from any machine
and names the experiment alone; that is the hash a site approves (`flip show RECIPE --hash`).

What a site receives is inert data. `unpack_config` refuses, before parsing, a text over
`MAX_CONFIG_BYTES` or one that does not match its hash; it parses JSON only (no YAML tags, no
anchors), refuses deep nesting, every `${...}` (an interpolation or resolver would read the
site's environment on the sender's behalf) and any site-owned setting, and lists every problem.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from omegaconf import DictConfig, OmegaConf

from flip.config.schema import SCHEMA_MARKER
from flip.data.schema import SITE_PATH_KEYS, SITE_RELATIVE_PATH_KEYS
from flip.errors import ConfigError
from flip.experiment.catalog import SCHEMAS

MAX_CONFIG_BYTES = 1 << 20
MAX_DEPTH = 24
RULE_INERT = "rule: a received config is inert data"
RULE_SITE_OWNED = "rule: site-owned settings"
# Data nodes whose paths are the site's: the source, and a multimodal join's modalities.
DATA_NODES = ("data", "data.image", "data.tabular", "data.text")
# federation keys of a deployment that say how this machine connects, with the values sent.
CONNECTION_KEYS = {"superlink": None, "root_certificates": None, "insecure": False}

_SCHEMA_NAMES = {cls: name for name, cls in SCHEMAS.items()}


def _with_markers(node: DictConfig, plain: dict) -> dict:
    """`plain` (the resolved `node`), each mapping marked with the schema it was validated against."""
    for key, value in plain.items():
        child = node[key] if isinstance(value, dict) else None
        if isinstance(child, DictConfig):
            plain[key] = _with_markers(child, value)
    name = _SCHEMA_NAMES.get(OmegaConf.get_type(node))
    return {SCHEMA_MARKER: name, **plain} if name else plain


def _node(container: dict, dotted: str) -> Any:
    for key in dotted.split("."):
        container = container.get(key) if isinstance(container, dict) else None
    return container


def without_site_settings(container: dict) -> dict:
    """The config with what belongs to sites left out: it names the experiment, not a machine."""
    container["allowed_targets"] = []
    federation = container.get("federation") or {}
    if "sites" in federation:
        federation["sites"] = {}
    if "sites_file" in federation:
        federation["sites_file"] = None
    # Where the researcher reaches the server, and with which CA file, is not the experiment.
    federation.update({key: value for key, value in CONNECTION_KEYS.items() if key in federation})
    for dotted in DATA_NODES:
        node = _node(container, dotted)
        if isinstance(node, dict):
            node.update({key: None for key in SITE_PATH_KEYS if key in node})
    return container


def pack_config(cfg: DictConfig) -> tuple[str, str]:
    """(JSON text, sha256) of the resolved config as sites receive it."""
    plain = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    text = json.dumps(without_site_settings(_with_markers(cfg, plain)), sort_keys=True, separators=(",", ":"))
    return text, hashlib.sha256(text.encode()).hexdigest()


def config_digest(cfg: DictConfig) -> str:
    """The sha256 a site sees for this config (what it approves)."""
    return pack_config(cfg)[1]


# ---------------------------------------------------------------- receiving


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate key {next(k for k in keys if keys.count(k) > 1)!r}")
    return dict(pairs)


def _depth(node: Any) -> int:
    """How deep mappings and lists nest (iteratively: the input is not trusted to be shallow)."""
    deepest, stack = 0, [(node, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, level + 1)
            stack.extend((child, level + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def _interpolations(node: Any, path: str = "") -> list[str]:
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            full = f"{path}.{key}" if path else str(key)
            if "${" in str(key):
                found.append(f"{full}: a key holds '${{' ({RULE_INERT})")
            found += _interpolations(value, full)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _interpolations(value, f"{path}[{index}]")
    elif isinstance(node, str) and "${" in node:
        shown = node if len(node) <= 60 else node[:57] + "..."
        found.append(f"{path}: interpolations and resolvers are refused in a received config ({shown!r}) ({RULE_INERT})")
    return found


def site_owned_problems(container: dict) -> list[str]:
    """Settings only a site may set, found in a config it received."""
    problems = []
    if container.get("allowed_targets"):
        problems.append(
            f"allowed_targets: a received config cannot widen a site's allow-list "
            f"({container['allowed_targets']!r}): a site lists what it trusts in its own settings ({RULE_SITE_OWNED})"
        )
    federation = container.get("federation") if isinstance(container.get("federation"), dict) else {}
    if federation.get("sites"):
        problems.append(f"federation.sites: a received config cannot carry sites' settings ({RULE_SITE_OWNED})")
    if federation.get("sites_file") is not None:
        problems.append(f"federation.sites_file: a received config cannot name a sites file ({RULE_SITE_OWNED})")
    for dotted in DATA_NODES:
        node = _node(container, dotted)
        if not isinstance(node, dict):
            continue
        for key in SITE_PATH_KEYS:
            if node.get(key) is not None:
                problems.append(
                    f"{dotted}.{key}: a received config cannot point a site at a path ({node[key]!r}), "
                    f"the site's own settings say where its data is ({RULE_SITE_OWNED})"
                )
        for key in SITE_RELATIVE_PATH_KEYS:
            value = node.get(key)
            if isinstance(value, str) and not _inside(value):
                problems.append(
                    f"{dotted}.{key}: a received config may only name paths inside the site's data folder, "
                    f"got {value!r} ({RULE_SITE_OWNED})"
                )
    return problems


def _inside(path: str) -> bool:
    """A relative path that stays in the folder it is relative to."""
    parts = path.replace("\\", "/").split("/")
    return not path.startswith(("/", "~", "\\")) and ":" not in parts[0] and ".." not in parts


def unpack_config(text: str, digest: str) -> dict:
    """The received config as plain data (schema markers kept), or ConfigError listing every
    reason it is not inert, not intact, or sets what belongs to the site."""
    size = len(text.encode())
    if size > MAX_CONFIG_BYTES:
        raise ConfigError([f"config: {size} bytes, more than the {MAX_CONFIG_BYTES} a site accepts ({RULE_INERT})"])
    if hashlib.sha256(text.encode()).hexdigest() != digest:
        raise ConfigError([f"config: does not match its sha256, so it is not built ({RULE_INERT})"])
    try:
        container = json.loads(text, object_pairs_hook=_no_duplicates)
    except (ValueError, RecursionError) as error:
        reason = "nested too deep" if isinstance(error, RecursionError) else str(error).splitlines()[0]
        raise ConfigError([f"config: not flip's JSON ({reason}): YAML, tags and anchors are refused ({RULE_INERT})"]) from None
    if not isinstance(container, dict):
        raise ConfigError([f"config: must be a mapping, got {type(container).__name__} ({RULE_INERT})"])
    if _depth(container) > MAX_DEPTH:
        raise ConfigError([f"config: nested deeper than {MAX_DEPTH} levels ({RULE_INERT})"])
    problems = _interpolations(container) + site_owned_problems(container)
    if problems:
        raise ConfigError(problems)
    return container
