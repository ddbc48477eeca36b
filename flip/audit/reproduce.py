"""`flip audit reproduce`: run a recorded run again and compare its models round by round.

The rerun is a new `flip run` process with the recorded recipe, overrides and seeds (they are in
the config), and with what decides float results beyond the seed set as recorded before torch
starts: its thread count and the CPU instruction set its kernels use.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flip.audit.compare import Difference, config_differences, data_differences, environment_differences
from flip.audit.manifest import file_sha256, now_iso
from flip.audit.run_directory import RECIPE_COPY
from flip.audit.verify import load_manifest, verify
from flip.errors import FlipError


@dataclass
class Reproduction:
    """The outcome: identical, or the first round whose global model differs and what else does."""

    original: Path
    rerun: Path
    rounds_compared: int = 0
    first_divergence: int | None = None
    differences: list[Difference] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        return self.first_divergence is None


def rerun_recipe(run_dir: Path, manifest: dict[str, Any]) -> tuple[Path, list[str]]:
    """The recipe to run again (the original if unchanged, else the run's copy) and a note."""
    recorded = manifest.get("recipe")
    original = Path(recorded) if recorded else None
    if original is not None and original.is_file() and file_sha256(original) == manifest.get("recipe_sha256"):
        return original, []
    copy = run_dir / RECIPE_COPY
    if copy.is_file() and file_sha256(copy) == manifest.get("recipe_sha256"):
        why = "is no longer on this machine" if original is None or not original.is_file() else "has changed since"
        return copy, [f"the recipe {recorded} {why}: rerunning the run's copy {RECIPE_COPY}"]
    raise FlipError(f"{run_dir}: cannot find the recipe it ran ({recorded}, sha256 {str(manifest.get('recipe_sha256'))[:12]}…), nor an intact copy")


def rerun_environment(manifest: dict[str, Any]) -> dict[str, str]:
    """This process's environment with the recorded thread count and CPU instruction set."""
    env = dict(os.environ)
    recorded = (manifest.get("environment") or {}).get("torch") or {}
    if recorded.get("num_threads"):
        env["OMP_NUM_THREADS"] = str(max(1, min(int(recorded["num_threads"]), os.cpu_count() or 1)))
    if recorded.get("cpu_capability"):
        env["ATEN_CPU_CAPABILITY"] = str(recorded["cpu_capability"]).lower()
    return env


def _names_hydra(item: str) -> bool:
    return item.lstrip("+~").removeprefix("override ").strip().split("=", 1)[0].split("/", 1)[0].split(".", 1)[0].split(":", 1)[0] == "hydra"


def checked_rerun(run_dir: Path, recipe: Path, manifest: dict[str, Any], allow_targets: bool) -> list[str]:
    """The recorded overrides, once the rerun is checked as what it is: a run directory may come
    from anyone, so its recipe copy and manifest are data. Hydra's own settings (`hydra.callbacks`
    instantiates anything) are never taken from them, and components beyond flip's defaults only
    when the auditor says so."""
    import yaml

    from flip.experiment.validate import validate

    overrides = [str(o) for o in manifest.get("overrides") or []]
    try:
        text = yaml.safe_load(recipe.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise FlipError(f"{recipe}: cannot read the recipe to rerun: {error}") from error
    defaults = [next(iter(d), "") if isinstance(d, dict) else str(d) for d in (text.get("defaults") or [])] if isinstance(text, dict) else []
    hydra = [o for o in overrides if _names_hydra(o)] + [d for d in defaults if _names_hydra(str(d))]
    if hydra or (isinstance(text, dict) and "hydra" in text):
        raise FlipError(f"{run_dir}: its recipe or recorded overrides set Hydra's own settings ({', '.join(hydra) or 'hydra:'}); reproduce runs none")
    extra = list(validate(recipe, overrides).allowed_targets or [])
    if extra and not allow_targets:
        raise FlipError(
            f"{run_dir}: its config allows components beyond flip's defaults ({', '.join(map(str, extra))}); "
            "rerunning builds them: pass --allow-targets if you trust where this run directory came from"
        )
    return overrides


def reproduce(run_dir: Path, out: Path | None = None, quiet: bool = False, allow_targets: bool = False) -> Reproduction:
    """Run `run_dir`'s recorded config again into `out` and compare the per-round model hashes."""
    run_dir = Path(run_dir).resolve()
    manifest = load_manifest(run_dir)
    if manifest.get("status") != "completed":
        raise FlipError(f"{run_dir}: the run did not complete (status {manifest.get('status')!r}); there is nothing to reproduce")
    if manifest.get("mode") == "deployment":
        raise FlipError(f"{run_dir}: a deployment trained at its sites; reproduce it as a simulation of the same recipe, or on the same federation")
    recipe, notes = rerun_recipe(run_dir, manifest)
    verdict = verify(run_dir)
    notes += [f"the run directory fails verify: {failure}" for failure in verdict.failures]
    cwd = Path(manifest.get("cwd") or ".")
    if not cwd.is_dir():
        notes.append(f"the run's working directory {cwd} is gone: relative paths in its config now point from {Path.cwd()}")
        cwd = Path.cwd()
    out = Path(out).resolve() if out else run_dir.with_name(f"{run_dir.name}-reproduced-{now_iso().replace(':', '')}")
    if out.exists() and any(out.iterdir()):
        raise FlipError(f"{out}: exists and is not empty; reproduce writes a new run directory")
    overrides = checked_rerun(run_dir, recipe, manifest, allow_targets)
    command = [sys.executable, "-m", "flip.cli", "run", str(recipe), *overrides, f"hydra.run.dir={out}"]
    completed = subprocess.run(command, cwd=cwd, env=rerun_environment(manifest), capture_output=quiet, text=True)
    if completed.returncode != 0:
        tail = (completed.stderr or "")[-2000:] if quiet else ""
        raise FlipError(f"the rerun failed (exit {completed.returncode}); its run directory is {out}\n{tail}".rstrip())
    return compare_reproduction(run_dir, out, manifest, notes)


def compare_reproduction(run_dir: Path, out: Path, manifest: dict[str, Any], notes: list[str]) -> Reproduction:
    rerun = load_manifest(out)
    result = Reproduction(run_dir, out, notes=notes)
    recorded = (manifest.get("models") or {}).get("rounds") or {}
    again = (rerun.get("models") or {}).get("rounds") or {}
    for round_ in sorted(set(recorded) | set(again), key=int):
        result.rounds_compared += 1
        if recorded.get(round_) != again.get(round_):
            result.first_divergence = int(round_)
            break
    if result.identical and manifest.get("model_sha256") != rerun.get("model_sha256"):
        result.first_divergence = max(map(int, recorded), default=0)  # rounds agree, the final model does not
    if not result.identical:
        result.differences = [
            *config_differences(manifest, rerun),
            *data_differences(manifest, rerun),
            *environment_differences(manifest, rerun),
        ]
    return result
