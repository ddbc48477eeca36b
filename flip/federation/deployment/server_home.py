"""The server's own folder: Flower's home and state database, logs, the enrolled sites, and the
runs folder where each run's directory is written.

```
<home>/flower/      FLWR_HOME of the SuperLink and its ServerApp processes
<home>/state.db     the SuperLink's database (enrolled keys and runs survive a restart)
<home>/logs/        superlink.log, executor.log, serverapp-<run id>.log
<home>/server.json  the settings in force (what the ServerApp reads)
<home>/sites.json   the enrolled sites, by name
<home>/runs/        one directory per run (unless `runs_dir` says elsewhere)
```
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flip.data.partition import natural_key
from flip.errors import FlipError

SERVER_HOME_ENV = "FLIP_SERVER_HOME"


@dataclass(frozen=True)
class ServerHome:
    root: Path

    @classmethod
    def from_env(cls) -> ServerHome:
        """The home of the `flip server` that started this process."""
        home = os.environ.get(SERVER_HOME_ENV)
        if not home:
            raise FlipError(f"flip's ServerApp runs under `flip server` (it sets {SERVER_HOME_ENV}); this process has no server home")
        return cls(Path(home))

    @property
    def flower(self) -> Path:
        return self.root / "flower"

    @property
    def database(self) -> Path:
        return self.root / "state.db"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def settings(self) -> dict[str, Any]:
        file = self.root / "server.json"
        if not file.is_file():
            raise FlipError(f"{file}: missing; is `flip server` running with this home?")
        return json.loads(file.read_text(encoding="utf-8"))

    def write_settings(self, settings: dict[str, Any]) -> None:
        (self.root / "server.json").write_text(json.dumps(settings, indent=1), encoding="utf-8")

    @property
    def runs(self) -> Path:
        return Path(self.settings()["runs_dir"])

    # -- enrolled sites

    def enrolled(self) -> dict[str, dict[str, Any]]:
        file = self.root / "sites.json"
        return json.loads(file.read_text(encoding="utf-8")) if file.is_file() else {}

    def enrol(self, name: str, entry: dict[str, Any]) -> None:
        sites = self.enrolled()
        sites[name] = entry
        file = self.root / "sites.json"
        temporary = file.with_suffix(".tmp")
        temporary.write_text(json.dumps(dict(sorted(sites.items())), indent=1), encoding="utf-8")
        os.replace(temporary, file)

    def site_names(self, wanted: int) -> list[str]:
        """The run's sites when the config names none: every enrolled site, in natural order."""
        names = sorted(self.enrolled(), key=natural_key)
        if not names:
            raise FlipError(
                "federation.site_names: empty, and this server has no enrolled sites (`flip server register-site NAME KEY.pub`); "
                "name the run's sites in federation.site_names"
            )
        if len(names) != wanted:
            raise FlipError(
                f"federation.site_names: empty, and this server has {len(names)} enrolled site(s) ({', '.join(names)}) "
                f"where federation.num_sites is {wanted}; name the run's sites in federation.site_names"
            )
        return names
