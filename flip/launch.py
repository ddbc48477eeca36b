"""Hands a validated recipe to Hydra's own app runner, so runs and sweeps behave as in any Hydra app."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from flip.experiment import catalog
from flip.experiment.compose import searchpath_override
from flip.console import print_summary
from flip.errors import FlipError

log = logging.getLogger(__name__)


class _RunFailed(BaseException):
    """Carries a run's FlipError past Hydra, which would print any Exception as a stack trace."""

    def __init__(self, error: FlipError):
        super().__init__(str(error))
        self.error = error


def hydra_argv(recipe: Path, overrides: list[str], multirun: bool) -> list[str]:
    argv = [*overrides, searchpath_override(), f"hydra.job.name={recipe.stem}"]
    return [*argv, "--multirun"] if multirun else argv


def resume_arguments(run_dir: Path, extra: list[str]) -> tuple[Path, list[str]]:
    """The recipe and overrides a run directory was made with, to run it again in place."""
    import json

    from omegaconf import OmegaConf

    run_dir = run_dir.expanduser().resolve()
    manifest, overrides_file = run_dir / "manifest.json", run_dir / ".hydra" / "overrides.yaml"
    if not manifest.is_file() or not overrides_file.is_file():
        raise FlipError(f"{run_dir}: not a run directory (no manifest.json or .hydra/overrides.yaml)")
    if extra:
        raise FlipError(f"--resume runs the recipe and overrides of {run_dir}; it takes no others ({' '.join(extra)})")
    recipe = json.loads(manifest.read_text(encoding="utf-8")).get("recipe")
    if not recipe or not Path(recipe).is_file():
        raise FlipError(f"{run_dir}: its recipe {recipe!r} is no longer on this machine")
    overrides = [str(o) for o in OmegaConf.load(overrides_file)]
    return Path(recipe), [*overrides, f"hydra.run.dir={run_dir}"]


def launch(recipe: Path, overrides: list[str], multirun: bool = False, resume: bool = False) -> None:
    """Run `recipe` through `hydra.main`: run directory, `.hydra/`, logging and sweeps come from Hydra."""
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from flip.audit.sweep import record_job

    from flip.run import run

    def task(cfg: DictConfig) -> dict[str, Any]:
        hydra = HydraConfig.get()
        run_dir = Path(hydra.runtime.output_dir)
        try:
            result = run(cfg, run_dir, recipe, resume=resume)
        except FlipError as error:
            log.error("%s", error)  # into the run's log file too
            raise _RunFailed(error) from error
        finally:
            if hydra.mode == RunMode.MULTIRUN:
                record_job(Path(hydra.sweep.dir).resolve(), run_dir.resolve(), int(hydra.job.num))
        print_summary(result.summary, result.run_dir)
        return result.summary

    catalog.register()  # Hydra's own composition of each job: typed by the schemas
    app = hydra.main(config_path=str(recipe.parent), config_name=recipe.stem, version_base="1.3")(task)
    saved_argv = sys.argv
    sys.argv = [saved_argv[0], *hydra_argv(recipe, overrides, multirun)]
    try:
        app()
    except _RunFailed as failed:
        raise failed.error from None
    finally:
        sys.argv = saved_argv
