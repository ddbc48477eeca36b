"""Every file pydicom ships for its tests goes through flip: it loads, or it is skipped with a precise
reason, and the verdict matches what pydicom itself makes of the file.

Rules, per file of `pydicom.data.get_testdata_files()` (folders aside):
- a sidecar name (.txt, .json, ...), a DICOMDIR index or a hidden file is not read and not counted;
- every other file is counted in `found_files` and is either used or skipped, never both or neither;
- a file pydicom cannot parse is "not a DICOM file" / "unreadable DICOM: <pydicom's error>", or,
  when pydicom reads it only with force=True, a raw data set without the Part-10 header;
- a parsed file without pixel data is "no pixel data";
- a file whose `ds.pixel_array` decodes loads in flip, unless its reason is a documented flip
  limitation (none in this corpus today; the list below says which texts count);
- a file whose `ds.pixel_array` fails is skipped with a reason naming its transfer syntax and
  repeating pydicom's error.
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import pydicom
import pytest
import torch
from pydicom.data import get_testdata_files
from pydicom.errors import InvalidDicomError

from flip.data.dicom.datamodule import DicomDataModule
from flip.data.dicom.files import RAW_DATASET, is_ignored
from flip.data.dicom.pixels import describe, transfer_syntax, transfer_syntax_name

# Reasons flip may give for pixels pydicom decodes: things flip deliberately does not turn into images.
DOCUMENTED_LIMITATIONS = ("unsupported PhotometricInterpretation",)
PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def corpus_files() -> dict[str, Path]:
    """pydicom's test files by their path below the folder they share (the bundled layout)."""
    files = [Path(name) for name in get_testdata_files() if Path(name).is_file()]
    root = Path(os.path.commonpath([path.parent for path in files]))
    return {path.relative_to(root).as_posix(): path for path in files}


def pydicom_verdict(path: Path) -> tuple[str, str | None]:
    """(kind, detail): what pydicom makes of a file, independently of flip.

    kind is "unparsable" (detail: error), "raw" (no Part-10 header), "dicomdir", "no pixels", "decodes", or "fails" (detail:
    pydicom's error on `ds.pixel_array`).
    """
    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError:
        return ("raw", None) if raw_dataset(path) else ("unparsable", None)
    except Exception as error:
        return "unparsable", describe(error)
    if str(ds.file_meta.get("MediaStorageSOPClassUID", "")) == "1.2.840.10008.1.3.10":
        return "dicomdir", None
    if not any(keyword in ds for keyword in PIXEL_KEYWORDS):
        return "no pixels", None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds.pixel_array  # noqa: B018 - decoding is the point
    except Exception as error:
        return "fails", describe(error)
    return "decodes", transfer_syntax_name(transfer_syntax(ds))


def raw_dataset(path: Path) -> bool:
    """A DICOM data set without the Part-10 header, which pydicom reads only with force=True."""
    try:
        return "SOPClassUID" in pydicom.dcmread(path, force=True)
    except Exception:
        return False


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    folder = tmp_path_factory.mktemp("pydicom-corpus")
    files = corpus_files()
    for relative, source in files.items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, folder / relative)
    return folder, files


@pytest.fixture(scope="module")
def flip_report(corpus, tmp_path_factory) -> DicomDataModule:
    folder, _ = corpus
    dm = DicomDataModule(min_samples=1, 
        root=folder, labels=None, require_labels=False, image_size=8, val_fraction=0.0, test_fraction=0.0,
        cache_dir=tmp_path_factory.mktemp("cache"),
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dm.setup()
    return dm


def test_the_corpus_is_the_real_one(corpus):
    _, files = corpus
    kinds = [pydicom_verdict(path)[0] for path in files.values()]
    assert len(files) > 150 and kinds.count("decodes") > 80 and kinds.count("fails") >= 3


def test_every_file_is_counted_once_as_used_or_skipped(corpus, flip_report):
    folder, files = corpus
    skipped = dict(flip_report.skipped)
    assert len(skipped) == len(flip_report.skipped), "a file reported twice"
    counted = {name for name in files if not is_ignored(Path(name)) and pydicom_verdict(files[name])[0] != "dicomdir"}
    assert flip_report.found_files == len(counted)
    assert set(flip_report.files_used) | set(skipped) == counted
    assert set(flip_report.files_used).isdisjoint(skipped)
    assert flip_report.num_items_found == len(flip_report.files_used)  # frames="middle": one item per file
    assert flip_report.unlabelled == flip_report.num_items_found and flip_report.label_counts == {}


@pytest.mark.parametrize("name", sorted(corpus_files()))
def test_flip_agrees_with_pydicom(name, corpus, flip_report):
    _, files = corpus
    kind, detail = pydicom_verdict(files[name])
    reason = dict(flip_report.skipped).get(name)
    if is_ignored(Path(name)) or kind == "dicomdir":
        assert reason is None and name not in flip_report.files_used
    elif kind == "unparsable":
        assert reason == "not a DICOM file" if detail is None else reason == f"unreadable DICOM: {detail}"
    elif kind == "raw":
        assert reason == RAW_DATASET
    elif kind == "no pixels":
        assert reason == "no pixel data"
    elif kind == "decodes":
        assert reason is None or reason.startswith(DOCUMENTED_LIMITATIONS), f"pydicom decodes {name}, flip says {reason}"
    else:
        ds = pydicom.dcmread(files[name])
        uid = transfer_syntax(ds)
        assert reason is not None, f"pydicom cannot decode {name} ({detail}) but flip used it"
        assert (transfer_syntax_name(uid) in reason and detail in reason) if uid else "Transfer Syntax UID" in reason


def test_loaded_images_are_unit_range_tensors(flip_report):
    images = flip_report.datasets["train"].tensors[0]
    assert images.shape == (flip_report.num_items_found, 1, 8, 8) and images.dtype == torch.float32
    assert torch.isfinite(images).all() and images.min() >= 0.0 and images.max() <= 1.0


def test_counters_name_transfer_syntaxes_and_modalities(flip_report):
    syntaxes, modalities = flip_report.transfer_syntaxes, flip_report.modalities
    for name in ("JPEG Baseline (Process 1)", "JPEG 2000 Image Compression (Lossless Only)", "RLE Lossless",
                 "JPEG-LS Lossless Image Compression", "Explicit VR Big Endian", "Deflated Explicit VR Little Endian"):  # fmt: skip
        assert syntaxes[name] > 0, name
    assert {"CT", "MR", "CR", "US", "RTDOSE"} <= set(modalities)
