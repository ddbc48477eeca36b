"""Schema keys every data source shares: where a site's data is, how it is split and batched.

Each source's own schema (`flip/data/<source>/schema.py`) extends `SiteDataConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from omegaconf import MISSING, SI


@dataclass
class SyntheticDataConfig:
    """Generated into flip's cache on first use: DICOM films, a FHIR export and notes per site."""

    num_sites: int = 3
    images_per_site: int = 240
    image_size: int = 64
    seed: int = 0


# Data keys that say where a site's data is: only the site's own settings set them.
SITE_PATH_KEYS = ("root", "site", "cache_dir")
# Data keys that name paths inside the site's data folder: a received config may not leave it.
SITE_RELATIVE_PATH_KEYS = ("labels", "dicom_dir", "notes_dir", "file", "fhir_dir")


@dataclass
class SiteDataConfig:
    """Keys of every data source: where a site's data is, how it is split and batched."""

    _target_: str = MISSING
    # Folder of this site's data (site-local, left for the site to set); null with `synthetic`
    # set reads flip's generated data set from its cache.
    root: Optional[str] = MISSING
    # Sub-folder of root holding this site's data (e.g. site-1); null uses root itself.
    site: Optional[str] = None
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    batch_size: int = 32
    num_workers: int = 0
    seed: int = SI("${seed}")
    # A site with fewer usable items stops the run with one clear message.
    min_samples: int = 10
    synthetic: Optional[SyntheticDataConfig] = None
    # flip's cache folder (null: $FLIP_CACHE_DIR, else $XDG_CACHE_HOME/flip, else ~/.cache/flip).
    cache_dir: Optional[str] = None
