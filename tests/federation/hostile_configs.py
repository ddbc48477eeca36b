"""Configs a hostile sender would write, and what a site must say when it refuses each.

Each case edits the config flip ships (plain JSON data), or replaces its text outright, as a
sender that skips flip's own validation would. Whatever a case names would write under the
`sentinel` folder if anything in it were ever called.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from flip.federation.shipping import MAX_CONFIG_BYTES

SLOTS = "(rule: component slots)"
NAMES = "(rule: allow-list)"
OBJECTS = "(rule: allow-list by object)"
INERT = "(rule: a received config is inert data)"
OWNED = "(rule: site-owned settings)"
SCHEMAS = "(rule: schemas)"
# The site whose own settings list `flip.*`: what passes its name check must still pass by object.
PATTERN_SITE = 1


@dataclass(frozen=True)
class Hostile:
    id: str
    expect: tuple[str, ...]  # fragments of the refusal: each problem's key and rule
    edit: Callable[[dict, Path], None] | None = None
    text: Callable[[str, Path], str] | None = None
    site: int = 0

    def sent(self, shipped: str, sentinel: Path) -> str:
        """The text this sender ships instead of flip's."""
        if self.text is not None:
            return self.text(shipped, sentinel)
        container = json.loads(shipped)
        self.edit(container, sentinel)
        return json.dumps(container, sort_keys=True, separators=(",", ":"))


def _set(dotted: str, value) -> Callable[[dict, Path], None]:
    """An edit that sets `dotted` to `value` (a callable gets the sentinel folder)."""

    def edit(container: dict, sentinel: Path) -> None:
        *parents, leaf = dotted.split(".")
        node = container
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value(sentinel) if callable(value) else value

    return edit


def _both(*edits: Callable[[dict, Path], None]) -> Callable[[dict, Path], None]:
    def edit(container: dict, sentinel: Path) -> None:
        for one in edits:
            one(container, sentinel)

    return edit


def _nested(depth: int) -> Callable[[str, Path], str]:
    def text(shipped: str, sentinel: Path) -> str:
        return shipped[:-1] + ',"deep":' + "[" * depth + "]" * depth + "}"

    return text


HOSTILE: list[Hostile] = [
    Hostile(
        "the_issue_example_writes_a_file",
        (
            "model.scheduler._target_: 'flip.results.write_json' is not an allowed learning-rate scheduler",
            "model.scheduler.path._target_: _target_ is only allowed where a component is configured",
            "model.scheduler.path._args_: _args_ is only allowed where a component is configured",
            SLOTS,
            NAMES,
        ),
        _set("model.scheduler", lambda s: {"_target_": "flip.results.write_json", "payload": {"a": 1},
                                           "path": {"_target_": "flip.results.Path", "_args_": [str(s / "owned.json")]}}),
    ),
    Hostile(
        "traversal_through_a_flip_module_to_torch_save",
        ("model.optimizer._target_: 'flip.federation.site.torch.save' is not an allowed optimizer", NAMES),
        _set("model.optimizer", lambda s: {"_target_": "flip.federation.site.torch.save", "_partial_": True, "f": str(s / "t.pt")}),
    ),
    Hostile(
        "traversal_past_a_sites_own_package_pattern",
        ("model._target_: 'flip.results.Path' reaches the class pathlib.Path through another module", OBJECTS),
        _set("model._target_", "flip.results.Path"),
        site=PATTERN_SITE,
    ),
    Hostile(
        "a_flip_function_under_a_sites_own_package_pattern",
        ("model.scheduler._target_: 'flip.results.write_json' is a function, not a learning-rate scheduler class", OBJECTS),
        _set("model.scheduler", lambda s: {"_target_": "flip.results.write_json", "_partial_": True, "path": str(s / "w.json")}),
        site=PATTERN_SITE,
    ),
    Hostile(
        "traversal_inside_a_default_package",
        ("model.scheduler._target_: 'torch.optim.lr_scheduler.partial' reaches the class functools.partial through another module", OBJECTS),
        _set("model.scheduler", {"_target_": "torch.optim.lr_scheduler.partial", "_partial_": True}),
    ),
    Hostile(
        "a_module_as_a_component",
        ("model.optimizer._target_: 'torch.optim.lr_scheduler' is a module, not an optimizer", OBJECTS),
        _set("model.optimizer._target_", "torch.optim.lr_scheduler"),
    ),
    Hostile(
        "os_system",
        ("model.optimizer._target_: 'os.system' is not an allowed optimizer", NAMES),
        _set("model.optimizer", lambda s: {"_target_": "os.system", "_partial_": True, "command": f"touch {s / 'os'}"}),
    ),
    Hostile(
        "subprocess_with_smuggled_args",
        ("model.optimizer._args_: an optimizer takes no _args_", "model.optimizer._target_: 'subprocess.run' is not an allowed optimizer", SLOTS, NAMES),
        _set("model.optimizer", lambda s: {"_target_": "subprocess.run", "_args_": [["touch", str(s / "sub")]]}),
    ),
    Hostile(
        "builtins_exec_as_the_model",
        ("model._target_: 'builtins.exec' is not an allowed model", NAMES),
        _set("model", lambda s: {"_target_": "builtins.exec", "source": f"open({str(s / 'exec')!r}, 'w')"}),
    ),
    Hostile(
        "builtins_eval_as_the_data_module",
        ("data._target_: 'builtins.eval' is not an allowed data module", NAMES),
        _set("data._target_", "builtins.eval"),
    ),
    Hostile(
        "os_system_as_an_evaluation_metric",
        ("evaluation.metrics.evil._target_: 'os.system' is not an allowed metric", NAMES),
        _set("evaluation.metrics", lambda s: {"evil": {"_target_": "os.system", "command": f"touch {s / 'metric'}"}}),
    ),
    Hostile(
        "traversal_from_torchmetrics_to_torch_save",
        ("evaluation.metrics.evil._target_: 'torchmetrics.classification.torch.save' is not an allowed metric", NAMES),
        _set("evaluation.metrics", lambda s: {"evil": {"_target_": "torchmetrics.classification.torch.save", "f": str(s / "m.pt")}}),
    ),
    Hostile(
        "a_torchmetrics_module_as_a_metric",
        ("evaluation.metrics.evil._target_: 'torchmetrics.classification.auroc' is a module, not a metric", OBJECTS),
        _set("evaluation.metrics", {"evil": {"_target_": "torchmetrics.classification.auroc"}}),
    ),
    Hostile(
        "a_metric_that_allocates_a_billion_bins",
        ("evaluation.metrics.ece.n_bins: at most 10000, got 1000000000",),
        _set("evaluation.metrics", {"ece": {"_target_": "torchmetrics.classification.BinaryCalibrationError", "n_bins": 10**9}}),
    ),
    Hostile(
        "a_component_nested_inside_a_metric",
        ("evaluation.metrics.ok.inner._target_: _target_ is only allowed where a component is configured", SLOTS),
        _set("evaluation.metrics", lambda s: {"ok": {"_target_": "torchmetrics.classification.BinaryAccuracy",
                                                     "inner": {"_target_": "builtins.open", "file": str(s / "nested"), "mode": "w"}}}),
    ),
    Hostile(
        "builtins_open_for_writing",
        ("model.optimizer._target_: 'builtins.open' is not an allowed optimizer", NAMES),
        _set("model.optimizer", lambda s: {"_target_": "builtins.open", "file": str(s / "open"), "mode": "w"}),
    ),
    Hostile(
        "numpy_save",
        ("model.scheduler._target_: 'numpy.save' is not an allowed learning-rate scheduler", NAMES),
        _set("model.scheduler", lambda s: {"_target_": "numpy.save", "file": str(s / "np.npy"), "arr": [1]}),
    ),
    Hostile(
        "numpy_load_with_pickles",
        ("data._target_: 'numpy.load' is not an allowed data module", NAMES),
        _set("data", lambda s: {"_target_": "numpy.load", "file": "x.npy", "allow_pickle": True}),
    ),
    Hostile(
        "torch_load_of_a_pickle",
        ("model._target_: 'torch.load' is not an allowed model", NAMES),
        _set("model", {"_target_": "torch.load", "f": "model.pt", "weights_only": False}),
    ),
    Hostile(
        "pickle_loads",
        ("model.optimizer._target_: 'pickle.loads' is not an allowed optimizer", NAMES),
        _set("model.optimizer._target_", "pickle.loads"),
    ),
    Hostile(
        "shutil_copy_as_the_strategy",
        ("strategy._target_: 'shutil.copyfile' is not an allowed Flower strategy", NAMES),
        _set("strategy", lambda s: {"_target_": "shutil.copyfile", "src": "/etc/hostname", "dst": str(s / "copy")}),
    ),
    Hostile(
        "a_dunder_path_to_globals",
        ("model._target_: 'flip.models.image.ImageClassifier.__init__.__globals__' is not a plain dotted name", NAMES),
        _set("model._target_", "flip.models.image.ImageClassifier.__init__.__globals__"),
        site=PATTERN_SITE,
    ),
    Hostile(
        "a_dunder_path_to_builtins",
        ("model.optimizer._target_: 'flip.__builtins__.open' is not a plain dotted name", NAMES),
        _set("model.optimizer._target_", "flip.__builtins__.open"),
        site=PATTERN_SITE,
    ),
    Hostile(
        "an_inherited_classmethod_that_loads_a_checkpoint",
        ("model._target_: 'flip.models.image.ImageClassifier.load_from_checkpoint' reaches a method through another module", OBJECTS),
        _set("model._target_", "flip.models.image.ImageClassifier.load_from_checkpoint"),
        site=PATTERN_SITE,
    ),
    Hostile(
        "a_method_of_a_flip_class",
        ("model._target_: 'flip.models.base.Classifier.configure_optimizers' is a function, not a model class", OBJECTS),
        _set("model._target_", "flip.models.base.Classifier.configure_optimizers"),
        site=PATTERN_SITE,
    ),
    Hostile(
        "hydra_call_to_instantiate_anything",
        ("model.optimizer._target_: 'hydra.utils.call' is not an allowed optimizer", "model.optimizer.config._target_: _target_ is only allowed", NAMES, SLOTS),
        _set("model.optimizer", lambda s: {"_target_": "hydra.utils.call", "config": {"_target_": "os.system", "command": f"touch {s / 'call'}"}}),
    ),
    Hostile(
        "args_smuggled_into_an_allowed_optimizer",
        ("model.optimizer._args_: an optimizer takes no _args_", SLOTS),
        _set("model.optimizer", {"_target_": "torch.optim.SGD", "_partial_": True, "_args_": [[1.0]], "lr": 0.1}),
    ),
    Hostile(
        "convert_on_the_model",
        ("model._convert_: a model takes no _convert_", SLOTS),
        _set("model._convert_", "all"),
    ),
    Hostile(
        "recursive_instantiation_of_the_data",
        ("data._recursive_: must be false, got True", SLOTS),
        _set("data._recursive_", True),
    ),
    Hostile(
        "a_target_in_a_free_form_trainer_value",
        ("trainer.limit_train_batches._target_: _target_ is only allowed where a component is configured", SLOTS),
        _set("trainer.limit_train_batches", lambda s: {"_target_": "builtins.exec", "source": f"open({str(s / 'tr')!r}, 'w')"}),
    ),
    Hostile(
        "a_target_in_an_optimizer_argument",
        ("model.optimizer.betas._target_: _target_ is only allowed where a component is configured", SLOTS),
        _set("model.optimizer.betas", lambda s: {"_target_": "os.system", "command": f"touch {s / 'betas'}"}),
    ),
    Hostile(
        "a_target_in_a_list",
        ("model.metrics[0]._target_: _target_ is only allowed where a component is configured", SLOTS),
        _set("model.metrics", [{"_target_": "os.system", "command": "true"}]),
    ),
    Hostile(
        "the_config_lists_its_own_targets",
        ("allowed_targets: a received config cannot widen a site's allow-list", OWNED),
        _both(_set("allowed_targets", ["os.system"]), _set("model.optimizer", {"_target_": "os.system", "_partial_": True})),
    ),
    Hostile(
        "the_config_trusts_everything",
        ("allowed_targets: a received config cannot widen a site's allow-list (['*'])", OWNED),
        _set("allowed_targets", ["*"]),
    ),
    Hostile(
        "the_config_carries_a_sites_settings",
        ("federation.sites: a received config cannot carry sites' settings", OWNED),
        _set("federation.sites", {"site-1": {"allowed_targets": ["os.system"], "approve": "any"}}),
    ),
    Hostile(
        "the_config_names_a_sites_file",
        ("federation.sites_file: a received config cannot name a sites file", OWNED),
        _set("federation.sites_file", "/tmp/sites.yaml"),
    ),
    Hostile(
        "an_interpolation_reads_the_sites_environment",
        ("data.labels: interpolations and resolvers are refused in a received config ('${oc.env:HOME}')", INERT),
        _set("data.labels", "${oc.env:HOME}"),
    ),
    Hostile(
        "a_secret_with_a_default",
        ("model.optimizer.lr: interpolations and resolvers are refused", INERT),
        _set("model.optimizer.lr", "${oc.env:AWS_SECRET_ACCESS_KEY,0.1}"),
    ),
    Hostile(
        "a_resolver_that_decodes",
        ("seed: interpolations and resolvers are refused", INERT),
        _set("seed", "${oc.decode:'42'}"),
    ),
    Hostile(
        "a_reference_to_another_key",
        ("model.num_classes: interpolations and resolvers are refused", INERT),
        _set("model.num_classes", "${data.synthetic.num_sites}"),
    ),
    Hostile(
        "the_config_points_the_site_at_a_folder",
        ("data.root: a received config cannot point a site at a path ('/etc')", OWNED),
        _set("data.root", "/etc"),
    ),
    Hostile(
        "the_config_picks_the_sites_cache",
        ("data.cache_dir: a received config cannot point a site at a path", OWNED),
        _set("data.cache_dir", lambda s: str(s)),
    ),
    Hostile(
        "a_relative_path_that_escapes",
        ("data.labels: a received config may only name paths inside the site's data folder, got '../../../etc/passwd'", OWNED),
        _set("data.labels", "../../../etc/passwd"),
    ),
    Hostile(
        "an_absolute_path_inside_the_data_settings",
        ("data.dicom_dir: a received config may only name paths inside the site's data folder, got '/etc'", OWNED),
        _set("data.dicom_dir", "/etc"),
    ),
    Hostile(
        "a_schema_marker_that_lies",
        ("data._schema_: 'privacy/none' is not a schema for this node", "model.optimizer._schema_: 'root' is not a schema", SCHEMAS),
        _both(_set("data._schema_", "privacy/none"), _set("model.optimizer._schema_", "root")),
    ),
    Hostile(
        "an_oversized_config",
        (f"config: {MAX_CONFIG_BYTES + 2000} bytes, more than the {MAX_CONFIG_BYTES} a site accepts", INERT),
        text=lambda shipped, s: shipped[:-1] + ',"padding":"' + "x" * (MAX_CONFIG_BYTES + 2000 - len(shipped) - 13) + '"}',
    ),
    Hostile(
        "yaml_with_a_python_tag",
        ("config: not flip's JSON", INERT),
        text=lambda shipped, s: f"seed: !!python/object/apply:os.system ['touch {s / 'yaml'}']\n",
    ),
    Hostile(
        "yaml_anchors_that_multiply",
        ("config: not flip's JSON", INERT),
        text=lambda shipped, s: "a: &a [x, x, x, x]\nb: &b [*a, *a, *a, *a]\nc: &c [*b, *b, *b, *b]\n",
    ),
    Hostile("nesting_too_deep_to_parse", ("config: not flip's JSON (nested too deep)", INERT), text=_nested(100_000)),
    Hostile("nesting_deeper_than_a_config", ("config: nested deeper than 24 levels", INERT), text=_nested(40)),
    Hostile(
        "a_key_given_twice",
        ("config: not flip's JSON (duplicate key 'seed')", INERT),
        text=lambda shipped, s: '{"seed":1,"seed":2}',
    ),
    Hostile("not_a_mapping", ("config: must be a mapping, got list", INERT), text=lambda shipped, s: "[1, 2]"),
]
