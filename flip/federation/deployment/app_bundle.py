"""What `flip run` submits to a SuperLink: a Flower app bundle (FAB) that holds no code.

The FAB is one `pyproject.toml` naming flip's module-level ServerApp and ClientApp and
declaring the run config keys; the config itself travels in the run config (`flip-config`,
text + sha256). Each machine runs the flip installed on it, never code that came with a run:
a site's worker refuses a FAB that carries anything else (`check_fab`).
"""

from __future__ import annotations

import io
import zipfile

import flip
from flip.errors import FlipError
from flip.federation.client_app import PROTOCOL

SERVER_APP = "flip.federation.server_app:app"
CLIENT_APP = "flip.federation.client_app:app"
COMPONENTS = {"serverapp": SERVER_APP, "clientapp": CLIENT_APP}
# Run config keys (Flower only passes keys the app declares), with their defaults.
RUN_CONFIG = {
    "flip-config": "",
    "flip-config-sha256": "",
    "flip-recipe": "",
    "flip-recipe-sha256": "",
    "flip-overrides": "[]",
    "flip-resume": "",
    "flip-protocol": PROTOCOL,
    "flip-version": flip.__version__,
}
FAB_FILES = {"pyproject.toml", ".info/CONTENT"}


def app_pyproject() -> dict:
    """The FAB's pyproject.toml, as a mapping."""
    return {
        "project": {"name": "flip-fl", "version": flip.__version__, "dependencies": []},
        "tool": {"flwr": {"app": {"publisher": "flip", "components": dict(COMPONENTS), "config": dict(RUN_CONFIG)}}},
    }


def build_fab() -> bytes:
    """The FAB flip submits: its pyproject.toml and Flower's content manifest, nothing else."""
    import tomli_w
    from flwr.cli.build import build_fab_from_files

    fab, _ = build_fab_from_files({"pyproject.toml": tomli_w.dumps(app_pyproject()).encode()})
    return fab


def check_fab(content: bytes) -> None:
    """FlipError unless `content` is a FAB that runs flip's own apps and carries no files of its own
    (checked by a site's worker, and by the server before its ServerApp process installs it)."""
    import tomli

    try:
        archive = zipfile.ZipFile(io.BytesIO(content))
        names = set(archive.namelist())
        config = tomli.loads(archive.read("pyproject.toml").decode())
    except (zipfile.BadZipFile, KeyError, UnicodeDecodeError, ValueError) as error:
        raise FlipError(f"this run's app bundle is not one flip builds ({error})") from None
    extra = sorted(names - FAB_FILES)
    if extra:
        raise FlipError(f"this run's app bundle carries files ({', '.join(extra[:5])}): a site only runs the flip installed on it")
    components = config.get("tool", {}).get("flwr", {}).get("app", {}).get("components", {})
    if components.get("clientapp") != CLIENT_APP:
        raise FlipError(f"this run asks for ClientApp {components.get('clientapp')!r}: a site only runs flip's ({CLIENT_APP})")
    if components.get("serverapp") != SERVER_APP:
        raise FlipError(f"this run asks for ServerApp {components.get('serverapp')!r}: flip's server only runs flip's ({SERVER_APP})")
