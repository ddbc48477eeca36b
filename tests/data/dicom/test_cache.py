"""The decoded-pixel cache and flip's cache folder: reused across processes, missed on a changed file or setting, rebuilt when damaged."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pydicom
import torch

from flip.data import default_cache_dir
from flip.data.dicom.datamodule import DicomDataModule
from flip.data.dicom import pixels as dicom_pixels

from tests.data.dicom.conftest import SMALL, copy_series, volume_module


def test_second_setup_does_not_read_files_again(synthetic_root, tmp_path):
    site = shutil.copytree(synthetic_root / "site-2", tmp_path / "site-2")
    dm = DicomDataModule(min_samples=1, root=site, image_size=32)
    dm.setup("fit")
    train = dm.datasets["train"]
    shutil.rmtree(site / "dicom")
    dm.setup("test")
    assert dm.datasets["train"] is train


def test_synthetic_parameters_generate_into_the_cache(tmp_path):
    params = {**SMALL, "num_sites": 1}
    dm = DicomDataModule(min_samples=1, synthetic=params, site="site-1", cache_dir=tmp_path, image_size=32)
    dm.prepare_data()
    dm.setup()
    assert dm.root.parent == tmp_path / "synthetic_dicom"
    assert dm.num_items_found == len(list((dm.root / "site-1").rglob("*.dcm")))


def test_default_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("FLIP_CACHE_DIR", str(tmp_path / "flip-cache"))
    assert default_cache_dir() == tmp_path / "flip-cache"
    monkeypatch.delenv("FLIP_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "flip"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "flip"


def setup_and_report(root: Path, cache: Path) -> dict:
    """Set a module up over `root` with this cache; what a later run would compare."""
    decodes = dicom_pixels.DECODES
    dm = DicomDataModule(min_samples=1, root=root, key_column="path", image_size=16, val_fraction=0, test_fraction=0, cache_dir=cache)
    dm.setup()
    images = dm.datasets["train"].tensors[0]
    return {"decodes": dicom_pixels.DECODES - decodes, "items": dm.num_items_found, "fingerprint": dm.fingerprint,
            "total": float(images.double().sum()), "skipped": [list(pair) for pair in dm.skipped], "hits": dm.cache_hits}  # fmt: skip


def setup_in_a_new_process(root: Path, cache: Path) -> dict:
    """`setup_and_report` in a fresh Python process, as the next round or run would do it."""
    code = (f"import json, sys; sys.path.insert(0, {str(Path(__file__).parents[3])!r}); "
            "from tests.data.dicom.test_cache import setup_and_report; "
            f"print(json.dumps(setup_and_report({str(root)!r}, {str(cache)!r})))")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def rewrite_pixels_keeping_size_and_times(path: Path) -> None:
    """New pixel values, same file size, the old mtime restored: only the content (and ctime) changes."""
    stat = path.stat()
    ds = pydicom.dcmread(path)
    ds.PixelData = (ds.pixel_array[::-1]).tobytes()
    ds.save_as(path)
    assert path.stat().st_size == stat.st_size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_a_new_process_reads_the_cache_and_a_changed_file_misses(real_folder, tmp_path):
    cache = tmp_path / "cache"
    first = setup_and_report(real_folder, cache)
    assert first["decodes"] == 6 and first["items"] == 4  # every file with pixels, the truncated one too
    again = setup_in_a_new_process(real_folder, cache)  # the next round or run: nothing decoded
    assert again["decodes"] == 0 and again["hits"] == 9  # the DICOMDIR found by its SOP class too
    same = ("items", "fingerprint", "total", "skipped")
    assert {key: again[key] for key in same} == {key: first[key] for key in same}
    assert [path.parent.name for path in cache.rglob("*.pt")] == ["decoded"]
    rewrite_pixels_keeping_size_and_times(real_folder / "ct.dcm")
    changed = setup_and_report(real_folder, cache)
    assert changed["decodes"] == 1 and changed["hits"] == 8
    assert changed["fingerprint"] != first["fingerprint"] and changed["total"] != first["total"]


def test_other_settings_decode_again_and_volumes_are_cached(tmp_path):
    copy_series(tmp_path / "site")
    cache = tmp_path / "cache"
    before = dicom_pixels.DECODES
    first = volume_module(tmp_path / "site", volume_size=[4, 8, 8], cache_dir=cache)
    assert dicom_pixels.DECODES == before + 5
    second = volume_module(tmp_path / "site", volume_size=[4, 8, 8], cache_dir=cache)
    assert dicom_pixels.DECODES == before + 5
    assert torch.equal(first.datasets["train"].tensors[0], second.datasets["train"].tensors[0])
    assert first.volume_spacing == second.volume_spacing
    volume_module(tmp_path / "site", volume_size=[4, 4, 4], cache_dir=cache)
    assert dicom_pixels.DECODES == before + 10 and len(list((cache / "decoded").glob("*.pt"))) == 2
    volume_module(tmp_path / "site", volume_size=[4, 8, 8], cache_dir=cache, cache=False)
    assert dicom_pixels.DECODES == before + 15


def test_a_damaged_cache_is_rebuilt_not_trusted(real_folder, tmp_path):
    def setup() -> DicomDataModule:
        dm = DicomDataModule(min_samples=1, root=real_folder, key_column="path", image_size=16, cache_dir=tmp_path, val_fraction=0, test_fraction=0)
        dm.setup()
        return dm

    before = dicom_pixels.DECODES
    setup()
    (pack,) = (tmp_path / "decoded").glob("*.pt")
    pack.write_bytes(pack.read_bytes()[: pack.stat().st_size // 2])
    rebuilt = setup()
    assert dicom_pixels.DECODES == before + 12 and rebuilt.num_items_found == 4
    assert setup().cache_hits == 9 and dicom_pixels.DECODES == before + 12
