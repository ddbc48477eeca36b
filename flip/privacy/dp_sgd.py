"""Sample-level DP-SGD (Opacus) inside Lightning training, as a Callback.

`DpSgd` makes one `trainer.fit` private with Opacus's own parts: per-sample gradient hooks
attached to the LightningModule without wrapping it (state_dict keys stay as they are), a
`DPOptimizer` in place of the configured optimizer (per-sample clipping, Gaussian noise), and a
`DPDataLoader` (Poisson sampling) in place of the train loader. Accounting uses Opacus's RDP
accountant. Flower clients keep no state between rounds, so a site's history is recomputed from
the number of rounds it trained before (`rounds_before`), each taking this round's planned steps.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import warnings
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.model_helpers import is_overridden
from opacus.accountants import RDPAccountant
from opacus.accountants.utils import get_noise_multiplier
from opacus.data_loader import DPDataLoader
from opacus.grad_sample import GradSampleHooks
from opacus.optimizers import DPOptimizer
from opacus.utils.module_utils import trainable_modules
from opacus.validators import ModuleValidator
from torch import nn
from torch.utils.data import DataLoader

from flip.errors import FlipError
from flip.privacy.mechanisms.dp_sgd import DpSgdConfig

log = logging.getLogger(__name__)
DEFAULTS = {f.name: f.default for f in dataclasses.fields(DpSgdConfig) if f.default is not dataclasses.MISSING}
_UNSET = object()
_MECHANISM = "privacy.mechanism=dp_sgd"
# Opacus's backward hook on a first layer, whose input needs no gradient: expected and harmless.
_FIRST_LAYER_HOOK_WARNING = "Full backward hook is firing when gradients are computed with respect to module outputs"


def dp_sgd_epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """Epsilon of `steps` Poisson-sampled Gaussian steps (Opacus's RDP accountant)."""
    return history_epsilon([(noise_multiplier, sample_rate, steps)], delta)


def history_epsilon(history: list[tuple[float, float, int]], delta: float) -> float:
    """Epsilon of an RDP accountant history [(noise multiplier, sample rate, steps)]."""
    accountant = _accountant(history)
    return accountant.get_epsilon(delta) if accountant.history else 0.0


def _accountant(history: list[tuple[float, float, int]]) -> RDPAccountant:
    accountant = RDPAccountant()
    accountant.history = [entry for entry in history if entry[2] > 0]
    return accountant


def default_delta(n_train: int) -> float:
    """The delta picked when `privacy.delta` is null: 1/n^1.1, below 1/n."""
    return 1.0 / n_train**1.1


def model_problems(module: nn.Module) -> list[str]:
    """Opacus's objections to `module` (e.g. BatchNorm), one line per layer, named."""
    problems = []
    for name, layer in trainable_modules(module):
        errors = ModuleValidator.validate(layer)
        if isinstance(layer, nn.EmbeddingBag) and layer.mode == "max":
            errors.append(ValueError("EmbeddingBag(mode='max') has no per-sample gradient in flip"))
        problems += [f"{name or 'model'} ({type(layer).__name__}): {error}" for error in errors]
    return problems


def embedding_bag_grad_sample(layer: nn.EmbeddingBag, activations: list[torch.Tensor], backprops: torch.Tensor):
    """Per-sample gradients of an EmbeddingBag fed padded [batch, tokens] ids.

    Opacus's own sampler expects (ids, offsets), drops repeated ids within a bag and ignores
    `padding_idx`; flip's text models repeat n-grams and pad every note.
    """
    if len(activations) > 1 or activations[0].dim() != 2:
        return _OPACUS_EMBEDDING_BAG(layer, activations, backprops)
    ids = activations[0]
    weights = torch.ones_like(ids, dtype=backprops.dtype)
    if layer.padding_idx is not None:
        weights = weights * (ids != layer.padding_idx)
    if layer.mode == "mean":
        weights = weights / weights.sum(dim=1, keepdim=True).clamp(min=1)
    contributions = weights.unsqueeze(-1) * backprops.unsqueeze(1)  # [batch, tokens, dim]
    grad_sample = torch.zeros(len(ids), *layer.weight.shape, device=ids.device, dtype=backprops.dtype)
    grad_sample.scatter_add_(1, ids.unsqueeze(-1).expand_as(contributions), contributions)
    return {layer.weight: grad_sample}


_OPACUS_EMBEDDING_BAG = GradSampleHooks.GRAD_SAMPLERS[nn.EmbeddingBag]


class _GradSampleHooks(GradSampleHooks):
    """Opacus's per-sample gradient hooks on the module itself, with flip's EmbeddingBag sampler."""

    def __init__(self, module: nn.Module):
        self.GRAD_SAMPLERS = {**GradSampleHooks.GRAD_SAMPLERS, nn.EmbeddingBag: embedding_bag_grad_sample}
        super().__init__(module, batch_first=True, loss_reduction="mean", strict=True)


def _attach_hooks(module: nn.Module, forbid_accumulation: bool) -> _GradSampleHooks:
    try:
        hooks = _GradSampleHooks(module)
    except NotImplementedError as error:  # e.g. a trainable layer with buffers; the message names it
        raise FlipError(f"{_MECHANISM} cannot train this model: {error}") from error
    if forbid_accumulation:
        hooks.forbid_grad_accumulation()  # a second backward before the step would break Poisson sampling
    return hooks


def _seeded_generator(device: torch.device | str = "cpu") -> torch.Generator:
    """A generator seeded from torch's global RNG, so a seeded run draws the same noise and batches."""
    seed = int(torch.randint(0, 2**62, (1,)).item())
    return torch.Generator(device=device).manual_seed(seed)


class DpSgd(Callback):
    """DP-SGD for one `trainer.fit`: clipping, noise, Poisson sampling and the privacy spent.

    After fit: `epsilon`, `delta`, `steps` (including `rounds_before` rounds), `sample_rate`,
    `noise_multiplier`, `epsilon_next` (after one more round like this one), and `spent()`.
    Use a new instance per fit.
    """

    def __init__(self, settings: Mapping[str, Any], rounds_before: int = 0, rounds_total: int = 1):
        self.settings = {**DEFAULTS, **dict(settings)}
        if rounds_before < 0 or rounds_total < 1:
            raise ValueError(f"rounds_before ({rounds_before}) must be >= 0 and rounds_total ({rounds_total}) >= 1")
        self.rounds_before = rounds_before
        self.rounds_total = rounds_total
        self.n_train: int | None = None
        self.sample_rate: float | None = None
        self.delta: float | None = None
        self.noise_multiplier: float | None = None
        self.steps_per_round: int | None = None
        self.steps_before = 0
        self.optimizer: DPOptimizer | None = None
        self._accountant = RDPAccountant()
        self._hooks: _GradSampleHooks | None = None
        self._original_optimizers: list[torch.optim.Optimizer] | None = None
        self._patches: list[tuple[Any, str, Any]] = []
        self._empty_batch = False

    # -- what was spent

    @property
    def steps(self) -> int:
        return sum(steps for _, _, steps in self._accountant.history)

    @property
    def epsilon(self) -> float:
        return history_epsilon(self._accountant.history, self.delta)

    @property
    def epsilon_next(self) -> float:
        return self._epsilon_after(self.steps_per_round or 0)

    def spent(self) -> dict[str, float]:
        return {
            "epsilon": self.epsilon,
            "delta": self.delta,
            "steps": self.steps,
            "sample_rate": self.sample_rate,
            "noise_multiplier": self.noise_multiplier,
            "epsilon_next": self.epsilon_next,
        }

    def _epsilon_after(self, more_steps: int) -> float:
        history = [*self._accountant.history, (self.noise_multiplier, self.sample_rate, more_steps)]
        return history_epsilon(history, self.delta)

    # -- Lightning hooks

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Everything is set up here: after configure_optimizers, before the train loader is loaded."""
        _check_trainer(trainer)
        _check_model(pl_module)
        warnings.filterwarnings("ignore", message=_FIRST_LAYER_HOOK_WARNING)
        loader = self._swap_train_loader(trainer, pl_module)
        self._plan(trainer, loader)
        self._check_budget()
        self._hooks = _attach_hooks(pl_module, forbid_accumulation=self.settings["poisson_sampling"])
        self._swap_optimizer(trainer, pl_module)
        self._guard_empty_batches(pl_module)
        if log.isEnabledFor(logging.INFO):  # each epsilon takes an RDP conversion (~0.1 s)
            self._log_plan()

    def _log_plan(self) -> None:
        log.info(
            "DP-SGD: noise multiplier %.3f, clipping norm %g, sample rate %.4f, %d step(s) this round, "
            "epsilon %.3f -> %.3f (delta %.3g)",
            self.noise_multiplier, self.settings["clipping_norm"], self.sample_rate, self.steps_per_round,
            self.epsilon, self.epsilon_next, self.delta,
        )

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        """An empty Poisson batch still takes a step: no gradient, only noise, as the accountant assumes."""
        if self._empty_batch:
            for parameter in self.optimizer.params:
                parameter.grad_sample = parameter.new_zeros((0, *parameter.shape))

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._restore(trainer, pl_module)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore(trainer, pl_module)

    # -- set-up steps

    def _swap_train_loader(self, trainer: L.Trainer, pl_module: L.LightningModule) -> DataLoader:
        """Serve the train loader (Poisson-sampled, if so configured) from the data hook Lightning calls next."""
        owner = trainer.datamodule if trainer.datamodule is not None else pl_module
        if not is_overridden("train_dataloader", owner):
            raise FlipError(f"{_MECHANISM} needs the train loader from a data module or the model's train_dataloader")
        loader = owner.train_dataloader()
        if not isinstance(loader, DataLoader):
            raise FlipError(f"{_MECHANISM} needs one map-style train DataLoader, got {type(loader).__name__}")
        if self.settings["poisson_sampling"]:
            loader = DPDataLoader.from_data_loader(loader, generator=_seeded_generator())
        self._patch(owner, "train_dataloader", lambda: loader)
        return loader

    def _plan(self, trainer: L.Trainer, loader: DataLoader) -> None:
        """Sample rate, delta, steps of this round and before it, and the noise multiplier."""
        self.n_train = len(loader.dataset)
        self.sample_rate = 1 / len(loader)  # as Opacus's make_private: one expected batch per 1/len
        self.delta = self._delta()
        planned = trainer.estimated_stepping_batches  # loads the swapped loader for epoch-limited fits
        if not math.isfinite(planned):
            raise FlipError(f"{_MECHANISM} needs a finite number of steps: set trainer.max_epochs or max_steps")
        self.steps_per_round = int(planned)
        self.steps_before = self.rounds_before * self.steps_per_round
        self.noise_multiplier = self._noise_multiplier()
        self._accountant = _accountant([(self.noise_multiplier, self.sample_rate, self.steps_before)])

    def _delta(self) -> float:
        delta = self.settings.get("delta")
        if delta is None:
            return default_delta(self.n_train)
        if not 0 < delta < 1 / self.n_train:
            raise FlipError(
                f"privacy.delta={delta:g} must be above 0 and below 1/n = {1 / self.n_train:.3g} "
                f"(n = {self.n_train} training samples); null picks 1/n^1.1 = {default_delta(self.n_train):.3g}"
            )
        return float(delta)

    def _noise_multiplier(self) -> float:
        """The configured noise, or the noise that spends `target_epsilon` over all rounds' steps."""
        noise, target = self.settings.get("noise_multiplier"), self.settings.get("target_epsilon")
        if self.settings["clipping_norm"] is None or self.settings["clipping_norm"] <= 0:
            raise FlipError(f"privacy.clipping_norm must be above 0, got {self.settings['clipping_norm']}")
        if noise is not None:
            if target is not None:
                log.warning("privacy.noise_multiplier=%g is used; set it to null to derive it from target_epsilon",
                            noise)
            return float(noise)
        if target is None:
            raise FlipError("privacy.noise_multiplier is null: set it, or set privacy.target_epsilon to derive it")
        steps = self.steps_per_round * self.rounds_total
        noise = get_noise_multiplier(
            target_epsilon=target, target_delta=self.delta, sample_rate=self.sample_rate, steps=steps, accountant="rdp"
        )
        return float(noise)

    def _check_budget(self) -> None:
        budget = self.settings.get("max_epsilon")
        if budget is None:
            return
        would_be = self._epsilon_after(self.steps_per_round)
        if would_be > budget:
            raise FlipError(
                f"privacy.max_epsilon={budget:g} would be exceeded: epsilon is {self.epsilon:.3f} after "
                f"{self.steps_before} step(s) and would be {would_be:.3f} after this round's "
                f"{self.steps_per_round} (delta {self.delta:.3g}); not training"
            )

    def _swap_optimizer(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The configured optimizer inside Opacus's DPOptimizer, which the accountant follows step by step."""
        self._original_optimizers = list(trainer.optimizers)
        expected_batch_size = max(1, int(self.n_train * self.sample_rate))  # as make_private
        self.optimizer = DPOptimizer(
            trainer.optimizers[0],
            noise_multiplier=self.noise_multiplier,
            max_grad_norm=self.settings["clipping_norm"],
            expected_batch_size=expected_batch_size,
            loss_reduction="mean",
            generator=_seeded_generator(pl_module.device),
            secure_mode=False,
        )
        self.optimizer.attach_step_hook(self._accountant.get_optimizer_hook_fn(sample_rate=self.sample_rate))
        trainer.optimizers = [self.optimizer]

    def _guard_empty_batches(self, pl_module: L.LightningModule) -> None:
        """Poisson sampling can draw no sample at all; flip's training steps (metrics, logging) need one."""
        training_step = pl_module.training_step

        def guarded(batch, *args, **kwargs):
            self._empty_batch = _is_empty(batch)
            if self._empty_batch:
                return torch.zeros((), device=pl_module.device, requires_grad=True)
            return training_step(batch, *args, **kwargs)

        self._patch(pl_module, "training_step", guarded)

    def _patch(self, owner: Any, name: str, value: Any) -> None:
        """Set an instance attribute for this fit; `_restore` puts back what was there."""
        self._patches.append((owner, name, vars(owner).get(name, _UNSET)))
        setattr(owner, name, value)

    def _restore(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Undo every swap, so the module, data module and trainer are as they were (idempotent)."""
        while self._patches:
            owner, name, previous = self._patches.pop()
            if previous is _UNSET:
                vars(owner).pop(name, None)
            else:
                setattr(owner, name, previous)
        if self._hooks is not None:
            self._hooks.cleanup()
            self._hooks = None
            for parameter in pl_module.parameters():
                vars(parameter).pop("summed_grad", None)  # DPOptimizer's, left on each parameter
        if self._original_optimizers is not None:
            trainer.optimizers = self._original_optimizers
            self._original_optimizers = None


def _is_empty(batch: Any) -> bool:
    """Whether a (*inputs, labels) batch holds no sample."""
    return isinstance(batch, (list, tuple)) and len(batch) > 0 and torch.is_tensor(batch[-1]) and len(batch[-1]) == 0


def _check_trainer(trainer: L.Trainer) -> None:
    """DP-SGD clips and noises every optimizer step of one optimizer, on whole batches."""
    if len(trainer.optimizers) != 1 or not trainer.lightning_module.automatic_optimization:
        raise FlipError(f"{_MECHANISM} needs a model with one optimizer and automatic optimization")
    if trainer.accumulate_grad_batches != 1:
        raise FlipError(f"{_MECHANISM} needs trainer.accumulate_grad_batches=1, got {trainer.accumulate_grad_batches}")
    if trainer.gradient_clip_val:
        log.warning("trainer.gradient_clip_val has no effect under dp_sgd: privacy.clipping_norm clips each sample")


def _check_model(module: nn.Module) -> None:
    problems = model_problems(module)
    if problems:
        raise FlipError(f"{_MECHANISM} cannot train this model:\n" + "\n".join(f"  - {p}" for p in problems))
