"""The allow-list on its own: names are checked before anything is imported, objects by what they
are (own path, class, kind), entries of an allow-list are exact names or `package.*`."""

from __future__ import annotations

import subprocess
import sys

import pytest

from flip.config.allowlist import SLOTS, AllowList, Kind, entry_problems, name_problem, object_problem, placement_problems, resolve
from flip.experiment.catalog import SCHEMAS

DEFAULTS = AllowList()


@pytest.mark.parametrize(
    "name", sorted(n for n in SCHEMAS if n.startswith(("data/", "model/", "strategy/")))
)
def test_every_shipped_component_passes_by_name_and_by_object(name):
    kind = {"data": Kind.DATA, "model": Kind.MODEL, "strategy": Kind.STRATEGY}[name.partition("/")[0]]
    target = SCHEMAS[name]._target_
    assert name_problem("k", kind, target, DEFAULTS) is None
    assert object_problem("k", kind, target, DEFAULTS) is None


@pytest.mark.parametrize(
    ("kind", "target"),
    [(Kind.OPTIMIZER, "torch.optim.SGD"), (Kind.OPTIMIZER, "torch.optim.Adam"), (Kind.SCHEDULER, "torch.optim.lr_scheduler.StepLR"),
     (Kind.SCHEDULER, "torch.optim.lr_scheduler.ReduceLROnPlateau"), (Kind.STRATEGY, "flwr.serverapp.strategy.FedProx")],
)
def test_public_re_exports_of_the_defaults_pass(kind, target):
    assert name_problem("k", kind, target, DEFAULTS) is None and object_problem("k", kind, target, DEFAULTS) is None


def test_a_name_that_fails_is_never_imported():
    """`antigravity` opens a web browser when imported: its name alone is refused, so it never is."""
    code = (
        "import sys; from flip.config.allowlist import AllowList, Kind, target_problems; "
        "p = target_problems({'model': {'_target_': 'antigravity.fly'}}, AllowList(), resolve=True); "
        "print(len(p), 'antigravity' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["1", "False"], done.stderr


def test_resolving_reads_attributes_without_running_them():
    class_attribute = resolve("flip.models.image.ImageClassifier.schema")  # a class attribute, read statically
    assert class_attribute.__name__ == "ImageClassifierConfig"
    assert isinstance(resolve("flip.models.base.Classifier.default_optimizer"), classmethod)  # not bound, not called


def test_placement_names_every_stray_hydra_key():
    slots = ", ".join([*SLOTS, "evaluation.metrics.<name>"])
    config = {
        "model": {"_target_": "flip.models.image.ImageClassifier", "_partial_": True,
                  "optimizer": {"_target_": "torch.optim.SGD", "_partial_": True, "kw": {"_target_": "x.y"}}},
        "trainer": {"_convert_": "all"},
        "data": {"_recursive_": True},
    }
    assert placement_problems(config) == [
        "model._partial_: a model takes no _partial_ (rule: component slots)",
        "model.optimizer.kw._target_: _target_ is only allowed where a component is configured "
        f"({slots}), not inside other settings (rule: component slots)",
        "trainer._convert_: _convert_ is only allowed where a component is configured "
        f"({slots}), not inside other settings (rule: component slots)",
        "data._recursive_: must be false, got True (rule: component slots)",
    ]


def test_an_allow_list_holds_exact_names_or_package_patterns():
    assert entry_problems(["mylab.models.Net", "mylab.*", "torch.optim.SGD"], "allowed_targets") == []
    assert [p.split(":")[0] for p in entry_problems(["*", "mylab.*.Net", "_private.*", "a.__class__", 3], "site.allowed_targets")] == [
        "site.allowed_targets[0]", "site.allowed_targets[1]", "site.allowed_targets[2]", "site.allowed_targets[3]", "site.allowed_targets[4]",
    ]


def test_a_package_pattern_admits_classes_of_the_slots_kind_defined_there():
    mine = AllowList.of(["torch.nn.*"])
    assert name_problem("k", Kind.MODEL, "torch.nn.Linear", mine) is None
    assert "is not a model" in object_problem("k", Kind.MODEL, "torch.nn.Linear", mine)
    assert "is a function" in object_problem("k", Kind.MODEL, "torch.nn.functional.relu", mine)
