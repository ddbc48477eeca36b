"""The run directory's one writer: events reach the file and every subscriber, checkpoints load."""

from __future__ import annotations

import json

import torch

from flip.audit.run_directory import BEST, ROUND_ENDED, RunDirectory, load_weights, read_events, round_checkpoint
from flip.models.image import ImageClassifier
from flip.results import model_sha256


def test_events_go_to_the_file_and_to_every_subscriber_in_order(tmp_path):
    directory, seen = RunDirectory(tmp_path / "run"), []
    directory.subscribe(seen.append)
    directory.emit("run_started", mode="local")
    directory.emit(ROUND_ENDED, round=1, model_sha256="ab" * 32, metrics={"val/loss": 0.5})
    assert [event["event"] for event in seen] == ["run_started", ROUND_ENDED]
    assert read_events(directory.path) == seen
    assert json.loads((directory.path / "events.jsonl").read_text().splitlines()[1])["metrics"] == {"val/loss": 0.5}


def test_a_round_checkpoint_loads_with_lightning_and_its_hash_is_the_models(tmp_path):
    model = ImageClassifier(channels=(4,))
    directory = RunDirectory(tmp_path)
    digest = directory.save_round(3, model.state_dict(), model.hparams)
    directory.mark_best(3)
    loaded = ImageClassifier.load_from_checkpoint(tmp_path / "checkpoints" / round_checkpoint(3), weights_only=True)
    assert model_sha256(loaded.state_dict()) == digest == model_sha256(load_weights(tmp_path / "checkpoints" / BEST))
    assert torch.load(tmp_path / "checkpoints" / BEST, weights_only=True)["epoch"] == 3
    assert not list(tmp_path.rglob("*.tmp"))
