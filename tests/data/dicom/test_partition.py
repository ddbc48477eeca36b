"""DicomDataModule as one site of a partitioned data set, on real synthetic DICOM files."""

from __future__ import annotations

from pathlib import Path

import pytest

from flip.data.dicom.datamodule import DicomDataModule
from flip.data.synthetic.dataset import write_synthetic_dicom

SMALL = {"num_sites": 3, "images_per_site": 30, "image_size": 32, "seed": 2}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return write_synthetic_dicom(tmp_path_factory.mktemp("synthetic"), **SMALL)


def site(root: Path, index: int, num_partitions: int, **partition) -> DicomDataModule:
    spec = {"seed": 5, "alpha": 0.5, "min_size": 2, **partition, "index": index, "num_partitions": num_partitions}
    dm = DicomDataModule(min_samples=1, root=root, image_size=32, batch_size=4, seed=1, partition=spec)
    dm.setup()
    return dm


@pytest.mark.parametrize("kind", ["iid", "dirichlet", "quantity"])
def test_pooled_partitions_are_disjoint_and_cover_the_data(root, kind):
    sites = [site(root, i, 3, kind=kind) for i in range(3)]
    pooled = DicomDataModule(min_samples=1, root=root, image_size=32, seed=1)
    pooled.setup()
    assert [dm.site_name for dm in sites] == ["site-1", "site-2", "site-3"]
    assert sum(dm.num_items_found for dm in sites) == pooled.num_items_found
    fingerprints = {dm.fingerprint for dm in sites}
    assert len(fingerprints) == 3


def by_group(root: Path, source: str, name: str, group: str) -> DicomDataModule:
    dm = DicomDataModule(min_samples=1, root=root, image_size=32, batch_size=4, seed=1, partition={"kind": "by_site", "source": source, "name": name, "group": group})
    dm.setup()
    return dm


def test_by_column_and_by_attribute_recover_the_generator_sites(root):
    pooled = DicomDataModule(min_samples=1, root=root, image_size=32, seed=1, partition={"kind": "by_site", "source": "attribute", "name": "InstitutionName"})
    hospitals = pooled.site_groups()
    assert hospitals == [f"Synthetic Hospital {i}" for i in (1, 2, 3)]
    by_column = [by_group(root, "column", "site", f"site-{i}") for i in (1, 2, 3)]
    by_attribute = [by_group(root, "attribute", "InstitutionName", hospital) for hospital in hospitals]
    by_folder = [DicomDataModule(min_samples=1, root=root, site=f"site-{i + 1}", image_size=32, seed=1) for i in range(3)]
    for dm in by_folder:
        dm.setup()
    assert [dm.site_name for dm in by_column] == ["site-1", "site-2", "site-3"]
    assert [dm.site_name for dm in by_attribute] == hospitals
    assert [dm.fingerprint for dm in by_column] == [dm.fingerprint for dm in by_folder]
    assert [dm.fingerprint for dm in by_attribute] == [dm.fingerprint for dm in by_folder]


def test_partition_is_deterministic(root):
    first = site(root, 1, 3, kind="dirichlet")
    second = site(root, 1, 3, kind="dirichlet")
    assert first.fingerprint == second.fingerprint
