"""Finding recipes: a path to a YAML anywhere, or a name from flip's recipes folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from flip.errors import FlipError
from flip.paths import DEFAULT_RECIPE, RECIPES_DIR


@dataclass(frozen=True)
class Recipe:
    name: str
    path: Path
    description: str
    command: str


def resolve_recipe(name_or_path: str | None) -> Path:
    """Return the recipe file for a path or a recipe name; the default recipe when None."""
    if name_or_path is None:
        name_or_path = DEFAULT_RECIPE
    candidate = Path(name_or_path).expanduser()
    if candidate.is_file():
        return candidate.resolve()
    named = RECIPES_DIR / f"{candidate.name.removesuffix('.yaml')}.yaml"
    if candidate.parent == Path(".") and named.is_file():
        return named.resolve()
    available = ", ".join(recipe.name for recipe in list_recipes()) or "none"
    raise FlipError(
        f"unknown recipe '{name_or_path}': no such file, and no recipe of that name "
        f"in {RECIPES_DIR} (available: {available})"
    )


def read_header(path: Path) -> tuple[str, str]:
    """The recipe's header comment: (one-line description, command that runs it)."""
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    description = lines[0] if lines else ""
    command = next((line for line in lines if line.startswith("flip ")), "")
    return description, command


def list_recipes() -> list[Recipe]:
    recipes = []
    for path in sorted(RECIPES_DIR.glob("*.yaml")):
        description, command = read_header(path)
        recipes.append(Recipe(path.stem, path, description, command))
    return recipes
