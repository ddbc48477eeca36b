"""`flip audit verify | reproduce | diff` on run directories written by real local and simulation runs."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from flip.audit.manifest import MANIFEST_FORMAT
from flip.audit.reproduce import compare_reproduction
from flip.audit.verify import verify
from flip.errors import FlipError
from tests.conftest import FAST_OVERRIDES, flip_cli, flip_run_dir

pytestmark = pytest.mark.slow


def tree_digest(folder: Path) -> str:
    """One sha256 over every file's path and bytes: equal before and after means nothing changed."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def flip_byte(path: Path, at: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    index = int(len(data) * at)
    data[index] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.fixture
def local_copy(local_run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(local_run, tmp_path / "run"))


@pytest.mark.parametrize("which", ["local_run", "simulation_run"])
def test_verify_passes_on_a_fresh_run(which, request):
    run = request.getfixturevalue(which)
    before = tree_digest(run)
    result = flip_cli(run.parent, "audit", "verify", str(run))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("PASS") and "config hash" in result.stdout
    manifest = json.loads((run / "manifest.json").read_text())
    rounds = manifest["models"]["rounds"]
    # Every round's checkpoint was checked against its recorded hash, and nothing was written.
    site_models = manifest["models"].get("sites", {})  # the simulation's cross-site evaluation
    assert len(site_models) == (2 if which == "simulation_run" else 0)
    assert f"{len(rounds) - 1 + 2 + len(site_models)} checkpoint model hashes" in result.stdout  # rounds 1…n, final, best, sites
    assert tree_digest(run) == before


@pytest.mark.parametrize("name", ["checkpoints/round_1.ckpt", "checkpoints/final.ckpt", "metrics.csv", ".hydra/config.yaml"])
def test_verify_fails_on_one_changed_byte_naming_the_file(local_copy, name):
    flip_byte(local_copy / name)
    verdict = verify(local_copy)
    assert not verdict.ok
    assert any(failure.startswith(f"{name}: changed since the run") for failure in verdict.failures), verdict.failures
    if name == ".hydra/config.yaml":  # the hash re-derived from the edited config no longer matches
        assert any("config hash" in failure or "cannot derive" in failure for failure in verdict.failures)


def test_verify_cli_exits_non_zero_and_names_a_truncated_checkpoint(local_copy):
    checkpoint = local_copy / "checkpoints" / "best.ckpt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:100])
    result = flip_cli(local_copy.parent, "audit", "verify", str(local_copy))
    assert result.returncode == 1 and result.stdout.startswith("FAIL")
    assert "checkpoints/best.ckpt: cannot be read as a checkpoint" in result.stdout


def test_verify_names_a_missing_and_an_added_file(local_copy):
    (local_copy / "summary.json").unlink()
    (local_copy / "notes.txt").write_text("added later")
    failures = verify(local_copy).failures
    assert "summary.json: missing" in failures
    assert "notes.txt: not in the manifest (added after the run)" in failures


def test_bad_input_is_named_and_nothing_is_modified(local_copy, tmp_path):
    manifest_file = local_copy / "manifest.json"
    manifest = json.loads(manifest_file.read_text())
    manifest["format"] = MANIFEST_FORMAT + 1
    manifest_file.write_text(json.dumps(manifest))
    before = tree_digest(local_copy)
    with pytest.raises(FlipError, match=r"manifest\.json: written by flip .* format 2; this flip .* reads format 1 or older"):
        verify(local_copy)
    not_a_run = tmp_path / "empty"
    not_a_run.mkdir()
    with pytest.raises(FlipError, match="not a run directory"):
        verify(not_a_run)
    result = flip_cli(tmp_path, "audit", "verify", str(not_a_run))
    assert result.returncode != 0 and "no run directory" in result.stderr + result.stdout
    assert tree_digest(local_copy) == before


@pytest.mark.parametrize("which", ["local_run", "simulation_run"])
def test_reproduce_is_identical_bit_for_bit(which, request, tmp_path):
    run = request.getfixturevalue(which)
    out = tmp_path / "again"
    result = flip_cli(tmp_path, "audit", "reproduce", str(run), "--out", str(out), timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert "identical" in result.stdout
    original = json.loads((run / "manifest.json").read_text())
    again = json.loads((out / "manifest.json").read_text())
    assert again["models"]["rounds"] == original["models"]["rounds"] and len(original["models"]["rounds"]) >= 2
    assert again["model_sha256"] == original["model_sha256"]
    assert again["environment"]["torch"]["num_threads"] == original["environment"]["torch"]["num_threads"]
    # A record that differs from round 1 on is reported as diverging there, with what differs.
    edited = json.loads(json.dumps(original))
    edited["models"]["rounds"]["1"] = "0" * 64
    edited["config"]["seed"] = 7
    diverged = compare_reproduction(run, out, edited, [])
    assert diverged.first_divergence == 1 and not diverged.identical
    assert ("config", "seed") in {(d.section, d.key) for d in diverged.differences}


def test_diff_names_a_changed_override_and_what_followed(local_run, tmp_path):
    other = flip_run_dir(tmp_path, *FAST_OVERRIDES, "seed=7")
    result = flip_cli(tmp_path, "audit", "diff", str(local_run), str(other))
    assert result.returncode == 0, result.stderr
    sections = sections_of(result.stdout)
    assert "  seed: (absent) → 7" in sections["overrides"]
    assert "  seed: 42 → 7" in sections["config"] and "  data.seed: 42 → 7" in sections["config"]
    assert any(line.startswith("  final.test/loss: ") for line in sections["metrics"])
    assert not any(line.startswith("  site-1.fingerprint: ") for line in sections.get("data", []))  # same data
    same = flip_cli(tmp_path, "audit", "diff", str(local_run), str(local_run))
    assert "no differences" in same.stdout


def sections_of(output: str) -> dict[str, list[str]]:
    """`flip audit diff`'s lines by section."""
    sections: dict[str, list[str]] = {}
    current = None
    for line in output.splitlines()[1:]:
        if not line.startswith("  "):
            current = line.strip()
        else:
            sections.setdefault(current, []).append(line)
    return sections


def test_reproduce_refuses_what_it_cannot_rerun(local_copy, tmp_path):
    manifest_file = local_copy / "manifest.json"
    manifest = json.loads(manifest_file.read_text())
    manifest["status"] = "failed"
    manifest_file.write_text(json.dumps(manifest))
    result = flip_cli(tmp_path, "audit", "reproduce", str(local_copy))
    assert result.returncode != 0 and "did not complete (status 'failed')" in result.stderr


@pytest.mark.parametrize("override", ["+hydra.callbacks.x._target_=os.system", "hydra/launcher=basic", "allowed_targets=[mylab.Scheduler]"])
def test_reproduce_takes_no_hydra_settings_or_extra_components_from_a_run_directory(local_copy, tmp_path, override):
    manifest_file = local_copy / "manifest.json"
    manifest = json.loads(manifest_file.read_text())
    manifest["overrides"] = [*manifest["overrides"], override]
    manifest_file.write_text(json.dumps(manifest))
    out = tmp_path / "rerun"
    result = flip_cli(tmp_path, "audit", "reproduce", str(local_copy), "--out", str(out))
    assert result.returncode != 0 and not out.exists(), result.stdout + result.stderr
    expected = "pass --allow-targets" if override.startswith("allowed") else "set Hydra's own settings"
    assert expected in result.stderr and "Traceback" not in result.stderr
