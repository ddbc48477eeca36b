"""Sample-level DP-SGD (flip.privacy.dp_sgd): real Lightning fits on small generated data."""

from __future__ import annotations

import math
from functools import partial

import lightning as L
import pytest
import torch
from opacus.accountants import RDPAccountant
from opacus.data_loader import DPDataLoader
from opacus.optimizers import DPOptimizer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from flip.experiment.recipes import resolve_recipe
from flip.experiment.validate import validate
from flip.errors import FlipError
from flip.models.base import Classifier
from flip.models.image import ImageClassifier
from flip.models.volume import VolumeClassifier
from flip.privacy.dp_sgd import DpSgd, dp_sgd_epsilon, embedding_bag_grad_sample
from flip.training import build_datamodule, build_model, build_trainer, configure_torch, quiet_lightning
from tests.conftest import FAST_OVERRIDES

SMALL = ["trainer=debug", "data.min_samples=5", "data.synthetic.num_sites=2", "data.synthetic.images_per_site=40",
         "data.synthetic.image_size=32", "data.site=site-1"]
DP = {"mechanism": "dp_sgd", "noise_multiplier": 1.0, "clipping_norm": 1.0, "poisson_sampling": True}


@pytest.fixture(scope="module")
def cfg():
    return validate(resolve_recipe("dicom_synthetic_local"), FAST_OVERRIDES)


@pytest.fixture(scope="module")
def datamodule(cfg):
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    return datamodule


def fit(cfg, datamodule, callbacks, model=None, **overrides) -> tuple[L.LightningModule, L.Trainer]:
    """One seeded, deterministic CPU fit (trainer=debug: one epoch of two batches, unless overridden)."""
    configure_torch(cfg)
    model = model or build_model(cfg)
    trainer = build_trainer(
        cfg, callbacks, logger=False, enable_checkpointing=False, enable_progress_bar=False, deterministic=True,
        limit_val_batches=0, num_sanity_val_steps=0, **overrides,
    )
    trainer.fit(model, datamodule=datamodule)
    return model, trainer


def dp_fit(cfg, datamodule, settings=None, rounds_before=0, rounds_total=1, **overrides):
    dp = DpSgd({**DP, **(settings or {})}, rounds_before=rounds_before, rounds_total=rounds_total)
    model, trainer = fit(cfg, datamodule, [dp], **overrides)
    return dp, model, trainer


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


class Capture(L.Callback):
    """Per-sample gradients before the DP step, and what the DP optimizer made of them."""

    def __init__(self, dp: DpSgd):
        self.dp = dp
        self.steps: list[dict[str, list[torch.Tensor]]] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.steps.append({"grad_sample": [p.grad_sample.clone() for p in self.dp.optimizer.params]})

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        params = self.dp.optimizer.params
        self.steps[-1].update(summed=[p.summed_grad.clone() for p in params], grad=[p.grad.clone() for p in params])


def test_per_sample_gradients_are_clipped_to_the_clipping_norm(cfg, datamodule):
    clip = 0.01
    dp = DpSgd({**DP, "noise_multiplier": 0.0, "clipping_norm": clip})
    capture = Capture(dp)
    fit(cfg, datamodule, [dp, capture])
    assert len(capture.steps) == 2
    for step in capture.steps:
        samples = step["grad_sample"]
        norms = torch.stack([g.reshape(len(g), -1).norm(dim=1) for g in samples], dim=1).norm(dim=1)
        assert len(norms) > 0 and (norms > clip).all()  # every sample needs clipping at this norm
        factors = (clip / (norms + 1e-6)).clamp(max=1.0)
        clipped = [g * factors.view(-1, *[1] * (g.dim() - 1)) for g in samples]
        clipped_norms = torch.stack([g.reshape(len(g), -1).norm(dim=1) for g in clipped], dim=1).norm(dim=1)
        assert (clipped_norms <= clip * (1 + 1e-5)).all()
        # The optimizer's sum is exactly the sum of the clipped per-sample gradients, and with no
        # noise the gradient it steps on is that sum over the expected batch size.
        torch.testing.assert_close(flat(step["summed"]), flat(g.sum(0) for g in clipped), rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(flat(step["grad"]), flat(step["summed"]) / dp.optimizer.expected_batch_size)


class ZeroLoss(ImageClassifier):
    """Zero per-sample gradients: an SGD(lr=1) step then moves the weights by the noise alone."""

    def training_step(self, batch, batch_idx):
        return super().training_step(batch, batch_idx) * 0


def test_noise_std_is_sigma_times_clipping_norm_over_the_batch(cfg, datamodule):
    sigma, clip = 2.0, 0.5
    model = ZeroLoss(optimizer=partial(torch.optim.SGD, lr=1.0))
    before = flat(p.detach().clone() for p in model.parameters())
    dp = DpSgd({**DP, "noise_multiplier": sigma, "clipping_norm": clip})
    fit(cfg, datamodule, [dp], model=model, max_epochs=-1, max_steps=1)
    step = flat(p.detach() for p in model.parameters()) - before
    expected_std = sigma * clip / dp.optimizer.expected_batch_size
    assert dp.optimizer.expected_batch_size == round(dp.n_train * dp.sample_rate) > 1
    assert step.numel() > 20_000
    assert step.std().item() == pytest.approx(expected_std, rel=0.03)
    assert abs(step.mean().item()) < 3 * expected_std / math.sqrt(step.numel())


def test_dp_weights_repeat_with_the_seed_and_differ_from_non_private_ones(cfg, datamodule):
    keys = set(build_model(cfg).state_dict())
    (_, first, trainer), (_, second, _) = dp_fit(cfg, datamodule), dp_fit(cfg, datamodule)
    plain, _ = fit(cfg, datamodule, [])
    a, b, c = first.state_dict(), second.state_dict(), plain.state_dict()
    assert set(a) == keys  # no `_module.` prefix: state dicts ship between server and sites as they are
    assert all(torch.equal(a[k], b[k]) for k in keys)
    assert any(not torch.equal(a[k], c[k]) for k in keys)
    # Nothing of Opacus is left on the model, the data module or the trainer after fit.
    assert not hasattr(first, "autograd_grad_sample_hooks") and "training_step" not in vars(first)
    assert not any(vars(p) for p in first.parameters())
    assert "train_dataloader" not in vars(datamodule)
    assert not isinstance(trainer.optimizers[0], DPOptimizer)


def test_other_seed_other_dp_weights(cfg, datamodule):
    reseeded = cfg.copy()
    reseeded.seed = 7
    (_, first, _), (_, other, _) = dp_fit(cfg, datamodule), dp_fit(reseeded, datamodule)
    assert any(not torch.equal(first.state_dict()[k], other.state_dict()[k]) for k in first.state_dict())


def test_epsilon_grows_with_steps_and_matches_opacus_rdp_accountant(cfg, datamodule):
    first, _, _ = dp_fit(cfg, datamodule)
    later, _, _ = dp_fit(cfg, datamodule, rounds_before=2)
    k, q, sigma, delta = first.steps_per_round, first.sample_rate, first.noise_multiplier, first.delta
    assert (k, first.steps, later.steps) == (2, 2, 6)
    assert delta == pytest.approx(1 / first.n_train**1.1) and q == 1 / len(datamodule.train_dataloader())

    reference = RDPAccountant()
    epsilons = []  # after 1, 2, 3 and 4 rounds of k steps
    for _ in range(4):
        for _ in range(k):
            reference.step(noise_multiplier=sigma, sample_rate=q)
        epsilons.append(reference.get_epsilon(delta))
    assert first.epsilon == pytest.approx(epsilons[0], rel=1e-9)
    assert first.epsilon_next == pytest.approx(epsilons[1], rel=1e-9)
    assert later.epsilon == pytest.approx(epsilons[2], rel=1e-9)
    assert later.epsilon_next == pytest.approx(epsilons[3], rel=1e-9)
    assert 0 < first.epsilon < first.epsilon_next < later.epsilon < later.epsilon_next
    assert later.epsilon == pytest.approx(dp_sgd_epsilon(sigma, q, 3 * k, delta), rel=1e-9)
    assert later.spent() == {
        "epsilon": later.epsilon, "delta": delta, "steps": 3 * k, "sample_rate": q,
        "noise_multiplier": sigma, "epsilon_next": later.epsilon_next,
    }


def test_step_limited_training_counts_its_steps(cfg, datamodule):
    dp, _, trainer = dp_fit(cfg, datamodule, max_epochs=-1, max_steps=7, limit_train_batches=None)
    assert trainer.global_step == dp.steps == dp.steps_per_round == 7
    assert 7 > len(datamodule.train_dataloader())  # the steps run over more than one epoch


def test_budget_is_checked_before_any_training_step(cfg, datamodule):
    model = build_model(cfg)
    untouched = {k: v.clone() for k, v in model.state_dict().items()}
    spent_after_three = dp_sgd_epsilon(1.0, 1 / len(datamodule.train_dataloader()), 6, 1e-3)
    budget = spent_after_three + 0.01  # round 4 would take it past the budget
    dp = DpSgd({**DP, "delta": 1e-3, "max_epsilon": budget}, rounds_before=3)
    with pytest.raises(FlipError, match=r"privacy\.max_epsilon") as caught:
        fit(cfg, datamodule, [dp], model=model)
    would_be = dp_sgd_epsilon(1.0, dp.sample_rate, 8, 1e-3)
    assert f"{spent_after_three:.3f}" in str(caught.value) and f"{would_be:.3f}" in str(caught.value)
    assert all(torch.equal(model.state_dict()[k], untouched[k]) for k in untouched)
    assert "train_dataloader" not in vars(datamodule) and "training_step" not in vars(model)


def test_delta_must_be_below_one_over_the_training_samples(cfg, datamodule):
    with pytest.raises(FlipError, match=r"privacy\.delta=0\.5 must be above 0 and below 1/n"):
        dp_fit(cfg, datamodule, {"delta": 0.5})
    assert "train_dataloader" not in vars(datamodule)


def test_target_epsilon_derives_the_noise_for_the_whole_run(cfg, datamodule):
    settings = {"noise_multiplier": None, "target_epsilon": 4.0}
    last, _, _ = dp_fit(cfg, datamodule, settings, rounds_before=2, rounds_total=3)
    first, _, _ = dp_fit(cfg, datamodule, settings, rounds_before=0, rounds_total=3)
    assert last.noise_multiplier == first.noise_multiplier > 0
    assert 4.0 - 0.05 <= last.epsilon <= 4.0
    assert first.epsilon < last.epsilon
    with pytest.raises(FlipError, match=r"privacy\.noise_multiplier is null"):
        dp_fit(cfg, datamodule, {"noise_multiplier": None})


@pytest.mark.parametrize(
    "recipe", ["dicom_synthetic_local", "text_synthetic_local", "fhir_synthetic_local", "multimodal_synthetic_local"]
)
def test_every_flip_model_trains_privately(recipe):
    cfg = validate(resolve_recipe(recipe), SMALL)
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    configure_torch(cfg)
    before = {k: v.clone() for k, v in build_model(cfg).state_dict().items()}
    dp, model, _ = dp_fit(cfg, datamodule, limit_train_batches=None)
    after = model.state_dict()
    assert set(after) == set(before) and dp.steps > 0 and math.isfinite(dp.epsilon)
    trained = [k for k, v in model.named_parameters() if v.requires_grad]
    assert all(not torch.equal(before[k], after[k]) for k in trained)


class Volumes(L.LightningDataModule):
    def __init__(self, n: int = 16, batch_size: int = 4, shape=(1, 6, 16, 16)):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        volumes, labels = torch.rand(n, *shape, generator=generator), torch.randint(0, 2, (n,), generator=generator)
        self.data = TensorDataset(volumes, labels)
        self.batch_size = batch_size

    def train_dataloader(self):
        generator = torch.Generator().manual_seed(0)
        return DataLoader(self.data, batch_size=self.batch_size, shuffle=True, generator=generator)


def plain_fit(model, datamodule, callbacks, **overrides) -> L.Trainer:
    quiet_lightning()
    trainer = L.Trainer(
        accelerator="cpu", deterministic=True, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, **{"max_epochs": 1, **overrides}, callbacks=callbacks,
    )
    trainer.fit(model, datamodule=datamodule)
    return trainer


def test_volume_model_trains_privately():
    L.seed_everything(0, verbose=False)
    model = VolumeClassifier(channels=(4, 8), hidden=8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    dp = DpSgd({**DP, "delta": 1e-3})
    plain_fit(model, Volumes(), [dp])
    assert dp.steps == 4 and set(model.state_dict()) == set(before)
    assert all(not torch.equal(before[k], v) for k, v in model.named_parameters())


class WithBatchNorm(Classifier):
    def __init__(self):
        super().__init__(2, ("accuracy",), None, None)
        self.net = nn.Sequential(
            nn.Conv3d(1, 4, 3), nn.BatchNorm3d(4), nn.AdaptiveMaxPool3d(1), nn.Flatten(), nn.Linear(4, 2)
        )

    def forward(self, volumes):
        return self.net(volumes)


def test_an_unsupported_layer_is_named():
    named = r"cannot train this model:\n  - net\.1 \(BatchNorm3d\): BatchNorm cannot support"
    with pytest.raises(FlipError, match=named):
        plain_fit(WithBatchNorm(), Volumes(), [DpSgd({**DP, "delta": 1e-3})])


class BatchSizes(L.Callback):
    def __init__(self):
        self.sizes: list[int] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.sizes.append(len(batch[-1]))


def test_empty_poisson_batches_still_take_a_noisy_step():
    L.seed_everything(0, verbose=False)
    model = VolumeClassifier(channels=(4,), hidden=4)
    dp, batches = DpSgd({**DP, "delta": 1e-3}), BatchSizes()
    trainer = plain_fit(model, Volumes(n=8, batch_size=1), [dp, batches], max_epochs=-1, max_steps=16)
    assert 0 in batches.sizes and trainer.global_step == dp.steps == 16
    assert all(p.isfinite().all() for p in model.parameters())


def test_without_poisson_sampling_the_loader_keeps_its_batches():
    L.seed_everything(0, verbose=False)
    dp, batches = DpSgd({**DP, "delta": 1e-3, "poisson_sampling": False}), BatchSizes()
    trainer = plain_fit(VolumeClassifier(channels=(4,), hidden=4), Volumes(n=16, batch_size=4), [dp, batches])
    assert batches.sizes == [4, 4, 4, 4] and dp.steps == 4 and dp.sample_rate == 0.25
    assert not isinstance(trainer.train_dataloader, DPDataLoader)


@pytest.mark.parametrize("mode", ["mean", "sum"])
def test_embedding_bag_per_sample_gradients_match_autograd(mode):
    torch.manual_seed(0)
    layer = nn.EmbeddingBag(20, 3, mode=mode, padding_idx=0)
    ids = torch.tensor([[5, 5, 7, 0, 0], [1, 2, 3, 4, 19], [0, 0, 0, 0, 0], [9, 9, 9, 9, 0]])  # repeats, padding
    backprops = torch.randn(len(ids), 3)
    (grad_sample,) = embedding_bag_grad_sample(layer, [ids], backprops).values()
    for i in range(len(ids)):
        layer.zero_grad()
        (layer(ids[i : i + 1]) * backprops[i]).sum().backward()
        torch.testing.assert_close(grad_sample[i], layer.weight.grad)
