"""DICOM ingest: flip's first pass vs a plain pydicom loop, then flip's cached pass vs its first pass.

Writes N (default 500) real-sized CT files: copies of pydicom's CT_small.dcm (its header, rescale
and transfer syntax) with 512x512 int16 pixel data drawn deterministically (a body ellipse, organs
and noise), each with its own SOPInstanceUID, plus a labels.csv. Then, in one process:
- plain: `pydicom.dcmread(path).pixel_array`, then flip's own resize to image_size (the same
  bilinear antialiased resize, on one torch thread as in flip's setup);
- flip first pass: `DicomDataModule.setup()` on a fresh decoded cache (read and sha256 on a helper
  thread ahead of the parsing one; parse, decode, modality LUT, window, resize, labels, splits,
  cache write);
- flip cached pass: a fresh `DicomDataModule` over the same cache (a new round or run).
Plain and first pass alternate, five times each, and their medians are compared; the cached pass
is timed five times too. The first-pass ratio depends on the machine: flip's extra work (the hash)
runs beside the parsing on a second core, so a machine whose other cores are busy shows less. Prints files/s of each, then `dicom_first_pass_ratio=<flip/plain>`
(target >= 0.9) and last `dicom_cached_speedup=<cached/first files/s>` (target >= 10).
Usage: python tests/benchmarks/dicom_ingest.py [NUM_FILES] [IMAGE_SIZE]
"""

from __future__ import annotations

import csv
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
import torch
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from flip.data.dicom import pixels as dicom_pixels
from flip.data.dicom.datamodule import DicomDataModule

SIZE = 512
REPEATS = 5


def phantom(rng: np.random.Generator) -> np.ndarray:
    """A 512x512 CT-like slice of stored values (HU + 1024): air, a body, two organs, noise."""
    y, x = np.mgrid[-1:1:SIZE * 1j, -1:1:SIZE * 1j]
    hounsfield = np.full((SIZE, SIZE), -1000.0)
    hounsfield[(x / 0.8) ** 2 + (y / 0.6) ** 2 < 1] = 40.0
    for _ in range(2):
        cx, cy, r = rng.uniform(-0.4, 0.4), rng.uniform(-0.3, 0.3), rng.uniform(0.05, 0.2)
        hounsfield[(x - cx) ** 2 + (y - cy) ** 2 < r**2] = rng.uniform(-800, 300)
    hounsfield += rng.normal(0, 20, hounsfield.shape)
    return np.clip(hounsfield + 1024, 0, 4095).astype(np.int16)


def write_files(folder: Path, count: int) -> list[Path]:
    """`count` CT files under folder/dicom/ and folder/labels.csv (two labels, four images a patient)."""
    template = pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False))
    rng = np.random.default_rng(0)
    paths, rows = [], []
    for index in range(count):
        ds = template.copy()
        ds.Rows = ds.Columns = SIZE
        ds.PixelData = phantom(rng).tobytes()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["flip-bench", str(index)])
        ds.PatientID = f"P{index // 4:04d}"
        path = folder / "dicom" / f"{ds.PatientID}" / f"{index:05d}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path)
        paths.append(path)
        rows.append({"SOPInstanceUID": ds.SOPInstanceUID, "PatientID": ds.PatientID, "label": (index // 4) % 2})
    with (folder / "labels.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return paths


def plain_pass(paths: list[Path], image_size: int) -> float:
    """Seconds for dcmread + pixel_array + the same resize over every file."""
    started = time.perf_counter()
    with dicom_pixels.one_thread():
        for path in paths:
            pixels = torch.from_numpy(pydicom.dcmread(path).pixel_array.astype(np.float32))
            dicom_pixels.resize(pixels[None, None], (image_size, image_size))
    return time.perf_counter() - started


def flip_pass(folder: Path, cache: Path, image_size: int) -> tuple[float, DicomDataModule]:
    """Seconds for one DicomDataModule.setup() over the folder with this decoded cache."""
    dm = DicomDataModule(min_samples=1, root=folder, image_size=image_size, cache_dir=cache)
    started = time.perf_counter()
    dm.setup()
    return time.perf_counter() - started, dm


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    image_size = int(sys.argv[2]) if len(sys.argv) > 2 else 64
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "site"
        paths = write_files(folder, count)
        plain, first = [], []
        for repeat in range(REPEATS):
            plain.append(plain_pass(paths, image_size))
            seconds, dm = flip_pass(folder, Path(tmp) / f"cache-{repeat}", image_size)
            first.append(seconds)
            assert dm.num_items_found == count and not dm.skipped, dm.skipped[:3]
        decodes = dicom_pixels.DECODES
        cached = [flip_pass(folder, Path(tmp) / f"cache-{REPEATS - 1}", image_size)[0] for _ in range(REPEATS)]
        assert dicom_pixels.DECODES == decodes, "the cached pass decoded again"
    plain_rate, first_rate, cached_rate = (count / statistics.median(times) for times in (plain, first, cached))
    print(f"files={count} size={SIZE}x{SIZE} image_size={image_size} repeats={REPEATS} (medians)")
    print(f"plain_files_per_s={plain_rate:.1f}")
    print(f"flip_first_pass_files_per_s={first_rate:.1f}")
    print(f"flip_cached_pass_files_per_s={cached_rate:.1f}")
    print(f"dicom_first_pass_ratio={first_rate / plain_rate:.3f}")
    print(f"dicom_cached_speedup={cached_rate / first_rate:.2f}")


if __name__ == "__main__":
    main()
