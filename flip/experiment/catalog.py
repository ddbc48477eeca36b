"""Every option's schema and every component's rules, gathered from where each is declared.

Each component declares its schema and rules beside its code (`flip/data/<source>/schema.py`,
`flip/models/schema.py`, `flip/privacy/mechanisms/`, `flip/config/strategies.py`); option files
name theirs (`defaults: [/schema/<group>/<name>@_here_]`), and this module is the one place that
knows them all. Hydra's ConfigStore holds a marker per schema (its name), never the dataclass:
Hydra composes, flip checks every key against the schemas here and reports every problem at
once, and `typed` gives the run its typed config.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from functools import cache
from pathlib import Path
from typing import Any, Dict

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from flip.config import schema as base
from flip.config.schema import SCHEMA_MARKER
from flip.config.strategies import STRATEGY_SCHEMAS
from flip.data.dicom import schema as dicom
from flip.data.fhir import schema as fhir
from flip.data.multimodal import schema as multimodal
from flip.data.text import schema as text
from flip.models import schema as models
from flip.privacy import schema as privacy

SCHEMAS: Dict[str, type] = {
    **base.SCHEMAS,
    **dicom.SCHEMAS,
    **fhir.SCHEMAS,
    **text.SCHEMAS,
    **multimodal.SCHEMAS,
    **models.SCHEMAS,
    **privacy.SCHEMAS,
    **STRATEGY_SCHEMAS,
}
# Config groups are the schema names' first parts: data, model, trainer, federation, strategy, ...
GROUPS = frozenset(name.partition("/")[0] for name in SCHEMAS if "/" in name)
TYPED = "typed_schema"


def register() -> None:
    """Store every schema in Hydra's ConfigStore as `typed_schema/<group>/<option>` (idempotent)."""
    store = ConfigStore.instance()
    for name, schema_cls in SCHEMAS.items():
        group, _, option = name.rpartition("/")
        store.store(group=f"{TYPED}/{group}" if group else TYPED, name=option, node=schema_cls)


def defaults(name: str) -> dict[str, Any]:
    """A schema's defaults as plain data, marked with its name."""
    plain = OmegaConf.to_container(OmegaConf.structured(SCHEMAS[name]), resolve=False, enum_to_str=True)
    return {SCHEMA_MARKER: name, **plain}


@cache
def schema_folder(lenient: bool) -> Path:
    """A config folder holding `schema/<group>/<option>.yaml`, which option files extend.

    Typed, each file extends the dataclass in the ConfigStore: Hydra's own composition of a run is
    checked. Lenient, each holds the schema's plain marked defaults: the one composition flip
    validates is untyped, so every problem is found rather than Hydra's first. Which one a
    composition sees is its search path's choice: nothing global changes. Written once per
    process, removed at exit.
    """
    folder = Path(tempfile.mkdtemp(prefix=f"flip-schemas-{'lenient' if lenient else 'typed'}-"))
    atexit.register(shutil.rmtree, folder, True)
    for name in SCHEMAS:
        group, _, option = name.rpartition("/")
        target = folder / "schema" / group / f"{option}.yaml"
        target.parent.mkdir(parents=True, exist_ok=True)
        typed_path = f"/{TYPED}/{name}" if group else f"/{TYPED}/{option}"
        node = defaults(name) if lenient else {"defaults": [f"{typed_path}@_here_"]}
        target.write_text(OmegaConf.to_yaml(OmegaConf.create(node)), encoding="utf-8")
    return folder


def typed(node: Any) -> Any:
    """A checked plain config (schema markers in) as a typed DictConfig, each marked node under
    its dataclass: what Hydra's strict composition would have given, without composing again."""
    if isinstance(node, dict):
        marker = node.get(SCHEMA_MARKER)
        children = {key: typed(value) for key, value in node.items() if key != SCHEMA_MARKER}
        if marker is None:
            return children
        return OmegaConf.merge(OmegaConf.structured(SCHEMAS[marker]), children)
    if isinstance(node, list):
        return [typed(value) for value in node]
    return node


def typed_config(container: dict) -> DictConfig:
    cfg = typed(container)
    return cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg)
