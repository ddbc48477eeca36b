"""The schema of flip's synthetic multi-site data set, shared by every data source's schema."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SyntheticDataConfig:
    """Generated into flip's cache on first use: DICOM films, a FHIR export and notes per site."""

    num_sites: int = 3
    images_per_site: int = 240
    image_size: int = 64
    seed: int = 0
