"""Every parameter is declared once: in its component's schema. Constructors agree with it, and
option files set only what differs from it."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
from hydra.utils import get_class
from omegaconf import OmegaConf

from flip.experiment.catalog import SCHEMAS, defaults
from flip.paths import CONF_DIR

COMPONENT_SCHEMAS = sorted(name for name in SCHEMAS if name.startswith(("data/", "model/")))
# Where a constructor's default may differ from its schema's, and why.
ALLOWED = {
    "root": "the schema requires a config to set it; in Python None reads flip's synthetic data",
    "seed": "the schema takes the run's seed (${seed})",
    "index_date": "the schema requires it; the constructor refuses None",
    "features": "None builds the schema's default feature spec",
    "optimizer": "None builds the schema's default optimizer (checked below)",
    "scheduler": "None and the schema's {} both mean no scheduler",
}
# Constructor parameters no option file sets, and why.
CONSTRUCTOR_ONLY = {"partition": "a simulated site's share of pooled data, set by flip's simulation"}


def _plain(value):
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    return value


def _schema_default(field: dataclasses.Field):
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


@pytest.mark.parametrize("name", COMPONENT_SCHEMAS)
def test_each_constructor_takes_its_schemas_parameters_with_its_defaults(name):
    schema = SCHEMAS[name]
    component = get_class(next(f.default for f in dataclasses.fields(schema) if f.name == "_target_"))
    parameters = inspect.signature(component).parameters
    fields = [f for f in dataclasses.fields(schema) if not f.name.startswith("_")]
    assert {f.name for f in fields} <= set(parameters), f"{name}: not in {component.__name__}()"
    extra = set(parameters) - {f.name for f in fields} - set(CONSTRUCTOR_ONLY)
    assert not extra, f"{component.__name__}() takes {extra}, which {schema.__name__} does not declare"
    for field in fields:
        if field.name in ALLOWED:
            continue
        default = parameters[field.name].default
        assert default is not inspect.Parameter.empty, f"{name}.{field.name}: no default in {component.__name__}()"
        assert _plain(default) == _plain(_schema_default(field)), f"{name}.{field.name}: {default!r} vs {_schema_default(field)!r}"


@pytest.mark.parametrize("name", sorted(n for n in COMPONENT_SCHEMAS if n.startswith("model/")))
def test_a_models_default_optimizer_is_its_schemas(name):
    import torch

    schema = SCHEMAS[name]
    component = get_class(schema._target_)
    assert component.schema is schema
    built = component.default_optimizer()
    expected = OmegaConf.to_container(OmegaConf.structured(schema).optimizer)
    optimizer = built([torch.nn.Parameter(torch.zeros(1))])
    assert f"{type(optimizer).__module__.rsplit('.', 1)[0]}.{type(optimizer).__name__}" == expected["_target_"]
    assert optimizer.defaults["lr"] == expected["lr"]


OPTION_FILES = sorted(p for p in CONF_DIR.glob("*/*.yaml") if p.parent.name != "hydra")


@pytest.mark.parametrize("path", OPTION_FILES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_an_option_file_sets_only_what_differs_from_its_schema(path):
    raw = OmegaConf.to_container(OmegaConf.load(path))
    schemas = [d for d in raw.pop("defaults", []) if isinstance(d, str) and d.startswith("/schema/")]
    assert len(schemas) == 1, f"{path.name} must extend exactly one /schema/<group>/<name>@_here_"
    own = defaults(schemas[0].removeprefix("/schema/").partition("@")[0])
    same = sorted(key for key, value in raw.items() if key in own and own[key] == value)
    assert not same, f"{path.parent.name}/{path.name} repeats its schema's defaults: {same}"
