"""What federation buys, per shipped federated recipe: each site alone, federated and pooled.

For each federated recipe (or those named on the command line), with the recipe's own settings:
every federated site trained alone (`federation=local data.site=SITE`), the recipe itself, and
every site's training data pooled on one machine (`federation=pooled`). Each model is evaluated
on every site's test split and on the server's held-out site where the recipe has one (the
baselines report them in `site_metrics`, as the federation does). A mechanism that protects what
sites send to a server means nothing without sites, and `privacy=none` does not take that
mechanism's keys, so such a recipe's baselines are those of its twin without it on the same data
(BASELINE_OF); DP-SGD trains every model alike. Prints one table of test AUROC per recipe, then
`federated/pooled`: the federated model's test AUROC over every site's test predictions pooled,
over the pooled model's; the last line is the smallest ratio (target >= 0.95).
Usage: python tests/benchmarks/recipe_results.py [RECIPE...]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from flip.experiment.recipes import resolve_recipe
from flip.experiment.validate import validate
from flip.paths import RECIPES_DIR

COMMON = ["trainer.enable_progress_bar=false"]
# Recipes whose privacy mechanism needs a server: the recipe whose baselines are theirs, with the
# overrides that give it the same data, model and training length.
BASELINE_OF = {"fhir_synthetic_fedavg_secagg_dp": ("fhir_synthetic_fedavg", ["data.synthetic.num_sites=6", "federation.num_sites=6"])}


def federated_recipes() -> list[str]:
    return [path.stem for path in sorted(RECIPES_DIR.glob("*.yaml")) if validate(path, []).federation.mode == "simulation"]


def flip_run(recipe: str, overrides: list[str], work: Path, env: dict[str, str]) -> tuple[dict, float]:
    """`flip run RECIPE OVERRIDES` in `work`: its summary.json and wall time."""
    before = set(work.glob("runs/*/*/summary.json"))
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "flip.cli", "run", recipe, *COMMON, *overrides],
                          cwd=work, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{recipe} {' '.join(overrides)} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    (summary,) = set(work.glob("runs/*/*/summary.json")) - before
    return json.loads(summary.read_text()), time.perf_counter() - started


def site_aurocs(summary: dict) -> dict[str, float]:
    return {site: metrics["test/auroc"] for site, metrics in summary["site_metrics"].items() if "test/auroc" in metrics}


def compare(recipe: str, work: Path, env: dict[str, str]) -> float:
    """Print the recipe's table; return federated/pooled test AUROC."""
    cfg = validate(resolve_recipe(recipe), [])
    twin, baseline = BASELINE_OF.get(recipe, (recipe, []))
    federated, fed_s = flip_run(recipe, [], work, env)
    sites = sorted(federated["site_metrics"], key=lambda name: [int(p) if p.isdigit() else p for p in name.split("-")])
    held_out = cfg.federation.server_eval_site
    rows = {f"{site} alone": flip_run(twin, [*baseline, "federation=local", f"data.site={site}"], work, env) for site in sites}
    rows["federated"] = (federated, fed_s)
    rows["pooled"] = flip_run(twin, [*baseline, "federation=pooled"], work, env)
    columns = [*sites, *([held_out] if held_out else [])]
    print(f"\n{recipe}: test AUROC on each site's test split ({held_out or 'no'} held-out site"
          f"{', marked *' if held_out else ''}); baselines: {twin} {' '.join(baseline)}")
    header = ["model", *[f"{c}*" if c == held_out else c for c in columns], "mean of sites", "time"]
    print(" | ".join(f"{h:>13}" for h in header))
    for name, (summary, seconds) in rows.items():
        if name == "federated":
            aurocs = {**site_aurocs(summary), **({held_out: summary["metrics"]["server:test/auroc"]} if held_out else {})}
        else:
            aurocs = site_aurocs(summary)
        mean = sum(aurocs[s] for s in sites) / len(sites)
        cells = [name, *[f"{aurocs[c]:.3f}" for c in columns], f"{mean:.3f}", f"{seconds:.0f}s"]
        print(" | ".join(f"{cell:>13}" for cell in cells))
    fed, pooled = federated["metrics"]["test/auroc"], rows["pooled"][0]["metrics"]["test/auroc"]
    print(f"federated/pooled test AUROC (all sites' test predictions pooled): {fed:.3f} / {pooled:.3f} = {fed / pooled:.3f}",
          flush=True)
    return fed / pooled


def main() -> None:
    recipes = sys.argv[1:] or federated_recipes()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        env = {**os.environ, "FLIP_CACHE_DIR": os.environ.get("FLIP_CACHE_DIR", str(work / "cache"))}
        ratios = {recipe: compare(recipe, work, env) for recipe in recipes}
    print()
    for recipe, ratio in ratios.items():
        print(f"{recipe}: federated/pooled {ratio:.3f}")
    print(f"min_federated_vs_pooled={min(ratios.values()):.3f}")


if __name__ == "__main__":
    main()
