"""`flip audit verify`: is a run directory what its manifest says, and does this machine match it?

Integrity (any failure makes the verdict fail, naming the file): every file's sha256, the config
hash re-derived from the config file, every checkpoint's model hash, the summary's model hash.
The environment (software, threads, CPU instruction set) is compared too, but a difference is a
note, not a failure: it says why a rerun here may not reproduce the run bit for bit.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

import flip
from flip.audit.manifest import MANIFEST_FORMAT, file_sha256, installed_distributions, run_environment
from flip.audit.run_directory import (
    BEST,
    CHECKPOINTS,
    FINAL,
    SITE_MODELS,
    is_plain_name,
    MANIFEST,
    SUMMARY,
    load_weights,
    read_manifest,
    read_summary,
    round_checkpoint,
    sealed_files,
)
from flip.errors import FlipError
from flip.results import config_sha256, model_sha256

# How a run's config hash is derived from its config file (the manifest's `config_file.hash`).
RESOLVED_YAML, FILE_BYTES = "resolved-yaml", "file-bytes"


@dataclass
class Verdict:
    """The outcome of verifying one run directory."""

    run_dir: Path
    checked: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


def load_manifest(run_dir: Path) -> dict[str, Any]:
    """The manifest of a run directory this flip can read, or FlipError saying why not."""
    if not run_dir.is_dir():
        raise FlipError(f"{run_dir}: not a directory")
    if not (run_dir / MANIFEST).is_file():
        raise FlipError(f"{run_dir}: not a run directory (no {MANIFEST})")
    manifest = read_manifest(run_dir)
    written = manifest.get("format", 0)
    if not isinstance(written, int) or written > MANIFEST_FORMAT:
        raise FlipError(
            f"{run_dir / MANIFEST}: written by flip {manifest.get('flip_version', '?')} in manifest format {written}; "
            f"this flip ({flip.__version__}) reads format {MANIFEST_FORMAT} or older: upgrade flip to audit it"
        )
    return manifest


def verify(run_dir: Path) -> Verdict:
    """Check one run directory against its manifest; reads only."""
    run_dir = Path(run_dir)
    verdict = Verdict(run_dir)
    manifest = load_manifest(run_dir)
    if manifest.get("status") != "completed":
        verdict.failures.append(f"{MANIFEST}: the run did not complete (status {manifest.get('status')!r}); only a completed run is sealed")
        return verdict
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        verdict.failures.append(f"{MANIFEST}: lists no file hashes (written by a flip before audits)")
        return verdict
    _check_files(run_dir, files, verdict)
    _check_config(run_dir, manifest, verdict)
    _check_models(run_dir, manifest, verdict)
    verdict.notes.extend(environment_differences(manifest))
    return verdict


def _check_files(run_dir: Path, files: dict[str, str], verdict: Verdict) -> None:
    for relative, recorded in files.items():
        path = run_dir / relative
        if not path.is_file():
            verdict.failures.append(f"{relative}: missing")
        elif file_sha256(path) != recorded:
            verdict.failures.append(f"{relative}: changed since the run (sha256 differs from the manifest's)")
    for extra in sorted(set(sealed_files(run_dir)) - set(files)):
        verdict.failures.append(f"{extra}: not in the manifest (added after the run)")
    verdict.checked.append(f"{len(files)} file hashes")


def _check_config(run_dir: Path, manifest: dict[str, Any], verdict: Verdict) -> None:
    source = manifest.get("config_file") or {"path": ".hydra/config.yaml", "hash": RESOLVED_YAML}
    path = run_dir / source["path"]
    try:
        if source["hash"] == FILE_BYTES:
            derived = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            derived = config_sha256(OmegaConf.load(path))
    except Exception as error:  # any unreadable or unresolvable config is a failure to report, not a crash
        verdict.failures.append(f"{source['path']}: cannot derive the config hash ({type(error).__name__}: {error})")
        return
    if derived != manifest.get("config_sha256"):
        verdict.failures.append(f"{source['path']}: its config hash {derived[:12]}… is not the manifest's {str(manifest.get('config_sha256'))[:12]}…")
    verdict.checked.append("config hash")


def _check_models(run_dir: Path, manifest: dict[str, Any], verdict: Verdict) -> None:
    models = manifest.get("models") or {}
    expected = {round_checkpoint(int(r)): digest for r, digest in (models.get("rounds") or {}).items() if int(r) > 0}
    expected[FINAL] = models.get("final") or manifest.get("model_sha256")
    if models.get("best"):
        expected[BEST] = models["best"]
    for site, digest in (models.get("sites") or {}).items():  # evaluation.cross_site's site models
        if not is_plain_name(str(site)):
            verdict.failures.append(f"manifest.json: models.sites names {site!r}, which is not a site's name")
            continue
        expected[f"{SITE_MODELS}/{site}.ckpt"] = digest
    checked = 0
    for name, digest in expected.items():
        path = run_dir / CHECKPOINTS / name
        if not path.is_file():
            if name == FINAL and (run_dir / CHECKPOINTS).is_dir():
                verdict.failures.append(f"{CHECKPOINTS}/{name}: missing")
            continue
        try:
            found = model_sha256(load_weights(path))
        except Exception as error:  # a truncated or foreign file: name it
            verdict.failures.append(f"{CHECKPOINTS}/{name}: cannot be read as a checkpoint ({type(error).__name__})")
            continue
        checked += 1
        if found != digest:
            verdict.failures.append(f"{CHECKPOINTS}/{name}: its model sha256 {found[:12]}… is not the manifest's {str(digest)[:12]}…")
    try:
        summary_hash = read_summary(run_dir).get("model_sha256")
    except FlipError as error:
        verdict.failures.append(str(error))
    else:
        if summary_hash != manifest.get("model_sha256"):
            verdict.failures.append(f"{SUMMARY}: its model_sha256 is not the manifest's")
    verdict.checked.append(f"{checked} checkpoint model hashes")


def environment_differences(manifest: dict[str, Any]) -> list[str]:
    """How this machine differs from the one that ran (empty when nothing that matters does)."""
    import torch  # noqa: F401  (so the current environment lists torch's settings)

    notes = []
    if manifest.get("flip_version") != flip.__version__:
        notes.append(f"flip {manifest.get('flip_version')} ran it; this is flip {flip.__version__}")
    recorded, current = manifest.get("environment") or {}, run_environment()
    for key in ("python", "machine", "cpu_count"):
        if recorded.get(key) != current.get(key):
            notes.append(f"{key}: {recorded.get(key)} then, {current.get(key)} now")
    for key in ("version", "cpu_capability"):  # threads and determinism are set by each run itself
        value, now = (recorded.get("torch") or {}).get(key), (current.get("torch") or {}).get(key)
        if value != now:
            notes.append(f"torch {key}: {value} then, {now} now")
    distributions = installed_distributions()
    changed = [
        f"{name} {version} then, {distributions.get(name, 'absent')} now"
        for name, version in (manifest.get("distributions") or {}).items()
        if distributions.get(name) != version
    ]
    notes.extend(changed)
    return notes
