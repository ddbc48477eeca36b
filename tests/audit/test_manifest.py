"""manifest.json's start: the recipe's hash, the software, the checkout's state, no patient data."""

from __future__ import annotations

import hashlib
import subprocess
from importlib import metadata

from flip.audit.manifest import git_state, start_manifest
from flip.experiment.recipes import resolve_recipe


def test_the_manifest_names_the_recipe_the_software_and_the_checkout():
    recipe = resolve_recipe(None)
    manifest = start_manifest(recipe=recipe, config_sha256="c" * 64, seed=7, mode="local")
    assert manifest["recipe_sha256"] == hashlib.sha256(recipe.read_bytes()).hexdigest()
    assert manifest["config_sha256"] == "c" * 64 and manifest["seed"] == 7 and manifest["mode"] == "local"
    assert manifest["versions"]["torch"] == metadata.version("torch")
    assert manifest["distributions"]["flwr"] == metadata.version("flwr")
    assert set(manifest) >= {"flip_version", "python", "platform", "started_at", "command", "git"}


def test_the_checkout_state_is_its_commit_and_whether_tracked_files_changed(tmp_path):
    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    assert git_state(tmp_path) is None  # not a checkout
    git("init", "-q")
    (tmp_path / "a.txt").write_text("one\n")
    git("add", "a.txt")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "first")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    assert git_state(tmp_path) == {"commit": head, "dirty": False}
    (tmp_path / "untracked.txt").write_text("not part of the checkout\n")
    assert git_state(tmp_path)["dirty"] is False
    (tmp_path / "a.txt").write_text("two\n")
    assert git_state(tmp_path) == {"commit": head, "dirty": True}
