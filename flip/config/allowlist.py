"""The `_target_` allow-list: what a config may build, checked on the object a path resolves to.

Hydra resolves a `_target_` by importing and then walking attributes, so `flip.results.Path` is
pathlib's Path and `flip.federation.site.torch.load` is torch's loader: a name that merely starts
with `flip.` can reach anything flip imported. flip therefore checks three things:

- placement: `_target_` (and Hydra's `_partial_`, `_recursive_`, `_args_`, `_convert_`) only in
  the component slots the schemas declare (`SLOTS`), each with only the keys it needs;
- the name, before anything is imported: flip's own data modules (in `flip.data`) and models (in
  `flip.models`), torch optimisers and schedulers, Flower strategies, plus the owner's
  `allowed_targets` (exact names, or `package.*` for classes defined in that package);
- the object, imported without calling anything: a class of the slot's kind whose own module
  and qualified name are the written path (or a re-export by a parent package). Only an exact
  name in the owner's list admits something else, such as a plain function.

The owner is whoever builds the component: the researcher's machine (the recipe's
`allowed_targets`) or a site (its own settings). A received config never widens a site's list.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from dataclasses import dataclass
from enum import Enum
from typing import Any, Iterable, Iterator

from flip.errors import ConfigError

HYDRA_KEYS = ("_target_", "_partial_", "_recursive_", "_args_", "_convert_")
RULE_SLOTS = "rule: component slots"
RULE_NAMES = "rule: allow-list"
RULE_OBJECTS = "rule: allow-list by object"


class Kind(Enum):
    """What a slot builds, and the base class its components derive from."""

    DATA = ("data module", "flip.data.base.SiteDataModule")
    MODEL = ("model", "flip.models.base.Classifier")
    OPTIMIZER = ("optimizer", "torch.optim.Optimizer")
    SCHEDULER = ("learning-rate scheduler", "torch.optim.lr_scheduler.LRScheduler", "torch.optim.lr_scheduler.ReduceLROnPlateau")
    STRATEGY = ("Flower strategy", "flwr.serverapp.strategy.Strategy")
    METRIC = ("metric", "torchmetrics.Metric")

    @property
    def label(self) -> str:
        return self.value[0]

    @property
    def bases(self) -> tuple[str, ...]:
        return self.value[1:]

    @property
    def a(self) -> str:
        """The label with its article: 'an optimizer', 'a model'."""
        return f"{'an' if self.label[0] in 'aeiou' else 'a'} {self.label}"


@dataclass(frozen=True)
class Slot:
    kind: Kind
    # Hydra keys the slot may carry besides `_target_` (each a bool).
    special: frozenset[str] = frozenset()


# Every place a config may name a component. A multimodal join's modalities name the data
# module of each source; the join builds them itself (`data._recursive_: false`).
SLOTS: dict[str, Slot] = {
    "data": Slot(Kind.DATA, frozenset({"_recursive_"})),
    "data.image": Slot(Kind.DATA),
    "data.tabular": Slot(Kind.DATA),
    "data.text": Slot(Kind.DATA),
    "model": Slot(Kind.MODEL),
    "model.optimizer": Slot(Kind.OPTIMIZER, frozenset({"_partial_"})),
    "model.scheduler": Slot(Kind.SCHEDULER, frozenset({"_partial_"})),
    "strategy": Slot(Kind.STRATEGY),
}
# Slots under a mapping whose keys the user names: `evaluation.metrics.<name>`.
NAMED_SLOTS: dict[str, Slot] = {"evaluation.metrics": Slot(Kind.METRIC)}


def slot_at(where: str) -> Slot | None:
    """The component slot at the full key `where`, if one is declared there."""
    if where in SLOTS:
        return SLOTS[where]
    parent, _, name = where.rpartition(".")
    return NAMED_SLOTS.get(parent) if name.isidentifier() else None

# Names accepted by default beside flip's own components: one public name in these packages.
_PACKAGE_DEFAULTS = {
    Kind.OPTIMIZER: "torch.optim",
    Kind.SCHEDULER: "torch.optim.lr_scheduler",
    Kind.STRATEGY: "flwr.serverapp.strategy",
    Kind.METRIC: "torchmetrics.classification",
}


# flip's own components: classes defined in these packages (checked by object: a subclass of the
# kind's base, defined at the written path).
_FLIP_PACKAGES = {Kind.DATA: "flip.data", Kind.MODEL: "flip.models"}


def default_names(kind: Kind) -> str:
    """The defaults of a kind, in words, for messages."""
    if kind in _PACKAGE_DEFAULTS:
        return f"a class in {_PACKAGE_DEFAULTS[kind]}"
    return f"flip's own, a class in {_FLIP_PACKAGES[kind]}"


def _is_plain_name(path: str, min_parts: int = 2) -> bool:
    """Dotted public identifiers: no private segment, no dunder, nothing but names."""
    parts = path.split(".")
    return len(parts) >= min_parts and all(p.isidentifier() and not p.startswith("_") for p in parts)


@dataclass(frozen=True)
class AllowList:
    """What one owner (the researcher's machine, or one site) trusts beyond the defaults."""

    entries: tuple[str, ...] = ()

    @classmethod
    def of(cls, entries: Iterable[str] | None) -> AllowList:
        return cls(tuple(str(e) for e in entries or ()))

    @property
    def exact(self) -> frozenset[str]:
        return frozenset(e for e in self.entries if not e.endswith(".*"))

    @property
    def packages(self) -> tuple[str, ...]:
        return tuple(e[:-2] for e in self.entries if e.endswith(".*"))

    def in_listed_package(self, path: str) -> bool:
        return any(path.startswith(package + ".") for package in self.packages)

    def names(self, kind: Kind, path: str) -> bool:
        """Whether the written name passes, before anything is imported."""
        if not _is_plain_name(path):
            return False
        if path in self.exact or self.in_listed_package(path):
            return True
        if kind in _FLIP_PACKAGES:
            return path.startswith(_FLIP_PACKAGES[kind] + ".")
        return path.rpartition(".")[0] == _PACKAGE_DEFAULTS[kind]


def entry_problems(entries: Any, key: str) -> list[str]:
    """An allow-list holds exact dotted names or `package.*` patterns, nothing broader."""
    if entries is None:
        return []
    if not isinstance(entries, (list, tuple)):
        return [f"{key}: must be a list of names, got {entries!r}"]
    problems = []
    for index, entry in enumerate(entries):
        pattern = isinstance(entry, str) and entry.endswith(".*")
        if not (isinstance(entry, str) and _is_plain_name(entry[:-2] if pattern else entry, 1 if pattern else 2)):
            problems.append(
                f"{key}[{index}]: {entry!r} is not an exact dotted name or a 'package.*' pattern "
                f"(no other wildcards, no private or dunder names) ({RULE_NAMES})"
            )
    return problems


# ---------------------------------------------------------------- checks on a plain config


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _nodes(node: Any, path: str) -> Iterator[tuple[str, dict]]:
    """Every mapping under `node` with its full key."""
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from _nodes(value, _join(path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _nodes(value, f"{path}[{index}]")


def placement_problems(node: Any, path: str = "") -> list[str]:
    """`_target_` and Hydra's other keys anywhere but where a schema declares a component."""
    problems = []
    for where, mapping in _nodes(node, path):
        slot = slot_at(where)
        for key in (k for k in HYDRA_KEYS if k in mapping):
            full = _join(where, key)
            if slot is None:
                problems.append(
                    f"{full}: {key} is only allowed where a component is configured "
                    f"({', '.join([*SLOTS, *(f'{named}.<name>' for named in NAMED_SLOTS)])}), not inside other settings ({RULE_SLOTS})"
                )
            elif key == "_target_":
                if not isinstance(mapping[key], str):
                    problems.append(f"{full}: must be a dotted name, got {mapping[key]!r} ({RULE_SLOTS})")
            elif key not in slot.special:
                problems.append(f"{full}: {slot.kind.a} takes no {key} ({RULE_SLOTS})")
            elif not isinstance(mapping[key], bool) or (key == "_recursive_" and mapping[key]):
                allowed = "false" if key == "_recursive_" else "true or false"
                problems.append(f"{full}: must be {allowed}, got {mapping[key]!r} ({RULE_SLOTS})")
    return problems


def slot_targets(node: Any, path: str = "") -> Iterator[tuple[str, Slot, str]]:
    """(full key of the `_target_`, its slot, the written name) for each configured component."""
    for where, mapping in _nodes(node, path):
        slot = slot_at(where)
        if slot is not None and isinstance(mapping.get("_target_"), str):
            yield _join(where, "_target_"), slot, mapping["_target_"]


def name_problem(key: str, kind: Kind, target: str, allow: AllowList) -> str | None:
    if allow.names(kind, target):
        return None
    if not _is_plain_name(target):
        return f"{key}: '{target}' is not a plain dotted name (private, dunder or malformed segment) ({RULE_NAMES})"
    return (
        f"{key}: '{target}' is not an allowed {kind.label} (allowed: {default_names(kind)}, "
        f"and what the builder lists in its own allowed_targets) ({RULE_NAMES})"
    )


def target_problems(node: Any, allow: AllowList, path: str = "", resolve: bool = False) -> list[str]:
    """Placement and name problems of every component under `node` (at `path`); with `resolve`,
    also the object each name resolves to."""
    problems = placement_problems(node, path)
    for key, slot, target in slot_targets(node, path):
        problem = name_problem(key, slot.kind, target, allow)
        if problem is None and resolve:
            problem = object_problem(key, slot.kind, target, allow)
        if problem is not None:
            problems.append(problem)
    return problems


# ---------------------------------------------------------------- the object behind a name


class Unresolvable(Exception):
    pass


def _import_chain(parts: list[str]) -> tuple[Any, int]:
    """The deepest package chain of `parts` that imports, and how many parts it took."""
    module, used = None, 0
    for count in range(1, len(parts)):
        if module is not None and not hasattr(module, "__path__"):
            break  # a plain module: the rest are attributes
        name = ".".join(parts[:count])
        try:
            module = importlib.import_module(name)
        except ImportError as error:
            if isinstance(error, ModuleNotFoundError) and error.name == name:
                break
            raise Unresolvable(f"cannot import {name}: {error}") from error
        used = count
    if module is None:
        raise Unresolvable(f"no module {parts[0]}")
    return module, used


def resolve(path: str) -> Any:
    """The object `path` names, by importing its packages and reading attributes; calls nothing."""
    parts = path.split(".")
    obj, used = _import_chain(parts)
    for part in parts[used:]:
        try:
            obj = inspect.getattr_static(obj, part)
        except AttributeError as error:
            raise Unresolvable(f"{'.'.join(parts[:used])} has no attribute {part}") from error
        used += 1
    return obj


def canonical_name(obj: Any) -> str | None:
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    return f"{module}.{qualname}" if isinstance(module, str) and isinstance(qualname, str) else None


def is_own_path(path: str, obj: Any) -> bool:
    """The written path is where `obj` is defined, or a parent package's re-export of it."""
    canonical = canonical_name(obj)
    if canonical is None:
        return False
    if path == canonical:
        return True
    package, _, name = path.rpartition(".")
    return (
        name == obj.__qualname__
        and obj.__module__.startswith(package + ".")
        and getattr(sys.modules.get(package), name, None) is obj
    )


def _describe(obj: Any) -> str:
    if inspect.ismodule(obj):
        return "a module"
    if inspect.isclass(obj):
        return f"the class {canonical_name(obj)}"
    if inspect.isfunction(obj) or inspect.isbuiltin(obj):
        return "a function"
    if isinstance(obj, (classmethod, staticmethod)) or inspect.ismethod(obj) or inspect.ismethoddescriptor(obj):
        return "a method"
    return f"a {type(obj).__name__} value"


def _bases(kind: Kind) -> tuple[type, ...]:
    return tuple(resolve(base) for base in kind.bases)


def object_problem(key: str, kind: Kind, target: str, allow: AllowList) -> str | None:
    """Why the object `target` names is not an allowed component of `kind` (None if it is)."""
    try:
        obj = resolve(target)
    except Unresolvable as error:
        return f"{key}: '{target}' cannot be imported: {error} ({RULE_OBJECTS})"
    own = canonical_name(obj)
    if own is None:
        return f"{key}: '{target}' is {_describe(obj)}, not {kind.a} ({RULE_OBJECTS})"
    if not is_own_path(target, obj):
        return (
            f"{key}: '{target}' reaches {_describe(obj)} through another module (it is defined as {own}), "
            f"and a component is named by its own path ({RULE_OBJECTS})"
        )
    if target in allow.exact:
        return None  # the owner trusts this exact name, whatever it is
    if not inspect.isclass(obj):
        return (
            f"{key}: '{target}' is {_describe(obj)}, not {kind.a} class: a plain function is "
            f"trusted only when listed by its exact name in the builder's own allowed_targets ({RULE_OBJECTS})"
        )
    bases = _bases(kind)
    if not issubclass(obj, bases):
        return f"{key}: '{target}' is not {kind.a} (a subclass of {' or '.join(kind.bases)}) ({RULE_OBJECTS})"
    return None


def checked_class(key: str, kind: Kind, target: str, allow: AllowList) -> Any:
    """The component `target` names, once its name and object pass; else ConfigError."""
    problem = name_problem(key, kind, target, allow) or object_problem(key, kind, target, allow)
    if problem is not None:
        raise ConfigError([problem])
    return resolve(target)


def safe_instantiate(node: Any, allow: AllowList, path: str, **kwargs: Any) -> Any:
    """`hydra.utils.instantiate` of the component at `path`, after every check above passed."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    container = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
    problems = target_problems(container, allow, path, resolve=True)
    if problems:
        raise ConfigError(problems)
    # Plain lists and dicts, so what a component keeps (checkpoint hyperparameters) holds no OmegaConf types.
    return instantiate(node, _convert_="all", **kwargs)
