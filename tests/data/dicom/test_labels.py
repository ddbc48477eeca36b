"""Labels from a CSV keyed at any level, from header keywords and private tags, in any character set."""

from __future__ import annotations

import logging
import shutil
from collections import Counter
from pathlib import Path

import pydicom
import pytest
from pydicom.multival import MultiValue
from pydicom.uid import generate_uid

from flip.data.dicom.datamodule import DicomDataModule
from flip.data.dicom.files import GEOMETRY_KEYWORDS, HEADER_KEYWORDS, header_text

from tests.data.dicom.conftest import DATA, pydicom_file, write_csv


def test_missing_label_column_is_reported(real_folder):
    with pytest.raises(ValueError, match="missing column"):
        DicomDataModule(min_samples=1, root=real_folder, key_column="path", label_column="diagnosis").setup()


PATIENTS = [DATA / "dicomdirtests" / "77654033", DATA / "dicomdirtests" / "98892001"]  # 2 patients, 3 studies, 7 series


@pytest.fixture
def two_patients(tmp_path) -> Path:
    for folder in PATIENTS:
        shutil.copytree(folder, tmp_path / "site" / folder.name)
    return tmp_path / "site"


def headers() -> list[pydicom.Dataset]:
    return [pydicom.dcmread(path, stop_before_pixels=True) for folder in PATIENTS for path in sorted(folder.rglob("*"))
            if path.is_file()]  # fmt: skip


@pytest.mark.parametrize("column", ["PatientID", "StudyInstanceUID", "SeriesInstanceUID", "AccessionNumber"])
def test_a_row_keyed_at_a_coarser_level_labels_every_image_under_it(two_patients, column):
    values = sorted({str(ds.get(column)) for ds in headers()})
    label_of = {value: index % 2 for index, value in enumerate(values)}
    write_csv(two_patients / "labels.csv", [{column: value, "label": label} for value, label in label_of.items()])
    dm = DicomDataModule(min_samples=1, root=two_patients, key_column=column, image_size=8, val_fraction=0.0, test_fraction=0.0)
    dm.setup()
    expected = Counter(label_of[str(ds.get(column))] for ds in headers())
    assert dm.label_counts == dict(expected) and dm.num_items_found == 14 and dm.skipped == []


def test_labels_from_a_header_keyword(two_patients):
    dm = DicomDataModule(min_samples=1, root=two_patients, labels=None, label_attribute="BodyPartExamined",
                         label_map={"CSPINE": 0, "HEAD": 1}, image_size=8, val_fraction=0, test_fraction=0)  # fmt: skip
    dm.setup()
    assert dm.label_counts == {0: 3, 1: 4}  # CR films of the c-spine, CT slices of the head
    reasons = dict(dm.skipped)
    assert len(reasons) == 7 and set(reasons.values()) == {"no label: the header has no BodyPartExamined value"}
    unknown = DicomDataModule(min_samples=1, root=two_patients, label_attribute="BodyPartExamined", label_map={"CSPINE": 0},
                              require_labels=False, image_size=8, val_fraction=0, test_fraction=0)  # fmt: skip
    unknown.setup()
    assert unknown.label_counts == {0: 3} and unknown.unlabelled == 7  # no value: unlabelled, not an error here
    assert Counter(reason for _, reason in unknown.skipped) == {
        "unknown label 'HEAD' from BodyPartExamined; allowed: label_map keys ['CSPINE']": 4
    }


def test_labels_from_a_private_tag(tmp_path):
    for name, value in (("CT_small.dcm", "1"), ("MR_small.dcm", "0"), ("rtdose_1frame.dcm", "2")):
        ds = pydicom.dcmread(pydicom_file(name))
        block = ds.private_block(0x0077, "FLIP LABELS", create=True)
        block.add_new(0x01, "LO", value)
        assert block.get_tag(0x01) == 0x00771001
        ds.save_as(tmp_path / name)
    dm = DicomDataModule(min_samples=1, root=tmp_path, labels=None, label_attribute="(0077,1001)", num_classes=2, image_size=8,
                         val_fraction=0, test_fraction=0)  # fmt: skip
    dm.setup()
    assert dm.label_counts == {0: 1, 1: 1}
    assert dm.skipped == [("rtdose_1frame.dcm", "unknown label '2' from (0077,1001); allowed: integers 0..1")]


CHARSET_FILES = Path(pydicom.data.__file__).parent / "charset_files"


@pytest.mark.parametrize(
    "path",
    [pydicom_file(name) for name in ("CT_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm", "rtplan.dcm")]
    + [CHARSET_FILES / name for name in ("chrJapMulti.dcm", "chrFrenMulti.dcm", "chrSQEncoding.dcm")],
    ids=lambda path: path.name,
)
def test_header_values_read_from_the_raw_bytes_are_pydicoms(path):
    keywords = (*HEADER_KEYWORDS, *GEOMETRY_KEYWORDS, "RescaleSlope", "RescaleIntercept", "PatientName", "ImageType")
    raw, converted = pydicom.dcmread(path), pydicom.dcmread(path)
    for keyword in keywords:
        value = converted.get(keyword)
        parts = value if isinstance(value, MultiValue) else [] if value is None else [value]
        assert header_text(raw, keyword) == "\\".join(str(part).strip() for part in parts), keyword


def test_label_keys_outside_ascii_are_decoded_with_the_character_set(tmp_path):
    patients = {"ISO_IR 100": "Müller", "ISO_IR 192": "Zoë^Ørsted", "\\ISO 2022 IR 87": "ヤマダ"}  # the last in escapes
    for index, (charset, patient) in enumerate(patients.items()):
        ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))
        ds.SpecificCharacterSet = charset.split("\\") if "\\" in charset else charset
        ds.PatientID, ds.SOPInstanceUID = patient, generate_uid()
        ds.save_as(tmp_path / f"{index}.dcm")
    raw = pydicom.dcmread(tmp_path / "2.dcm").get_item(0x00100020).value
    assert raw.isascii() and b"\x1b" in raw  # ASCII bytes that still need the character set
    write_csv(tmp_path / "labels.csv", [{"PatientID": patient, "label": i % 2} for i, patient in enumerate(patients.values())])
    dm = DicomDataModule(min_samples=1, root=tmp_path, key_column="PatientID", image_size=8, val_fraction=0, test_fraction=0)
    dm.setup()
    assert dm.skipped == [] and dm.label_counts == {0: 2, 1: 1}


def test_rows_without_images_and_unknown_labels_are_reported(real_folder, caplog):
    ct, mr = (pydicom.dcmread(real_folder / name).SOPInstanceUID for name in ("ct.dcm", "mr/mr.dcm"))
    missing = [f"1.2.3.{index}" for index in range(7)]
    rows = [{"SOPInstanceUID": ct, "label": "1"}, {"SOPInstanceUID": mr, "label": "2"}]
    write_csv(real_folder / "labels.csv", rows + [{"SOPInstanceUID": uid, "label": "0"} for uid in missing])
    dm = DicomDataModule(min_samples=1, root=real_folder, num_classes=2, image_size=8, val_fraction=0, test_fraction=0)
    with caplog.at_level(logging.WARNING, logger="flip.data"):
        dm.setup()
    reasons = dict(dm.skipped)
    assert dm.label_counts == {1: 1}
    assert reasons["mr/mr.dcm"] == f"unknown label '2' in labels.csv line 3 (SOPInstanceUID {mr!r}); allowed: integers 0..1"
    shown = ", ".join(repr(uid) for uid in missing[:5])
    assert reasons["labels.csv"] == f"7 of 9 label row(s) match no image found (SOPInstanceUID): {shown}, ..."
    assert sum("match no image" in record.getMessage() for record in caplog.records) == 1


def test_named_labels_map_through_label_map(real_folder):
    rows = [{"path": "ct.dcm", "label": "benign"}, {"path": "mr/mr.dcm", "label": "malignant"}, {"path": "rgb.dcm", "label": "cat"}]
    write_csv(real_folder / "labels.csv", rows)
    dm = DicomDataModule(min_samples=1, root=real_folder, key_column="path", label_map={"benign": 0, "malignant": 1}, image_size=8,
                         val_fraction=0, test_fraction=0)  # fmt: skip
    dm.setup()
    assert dm.label_counts == {0: 1, 1: 1}
    assert dict(dm.skipped)["rgb.dcm"] == "unknown label 'cat' in labels.csv line 4 (path 'rgb.dcm'); allowed: label_map keys ['benign', 'malignant']"


def test_without_a_label_source_every_image_is_unlabelled_not_an_error(real_folder):
    dm = DicomDataModule(min_samples=1, root=real_folder, labels=None, require_labels=False, image_size=8, val_fraction=0, test_fraction=0)
    dm.setup()
    assert dm.num_items_found == dm.unlabelled == 5 and dm.label_counts == {}
    assert sorted(dict(dm.skipped)) == ["mr/truncated.dcm", "notes.bin", "plan.dcm"]
    no_file = DicomDataModule(min_samples=1, root=real_folder, labels="missing.csv", require_labels=False, image_size=8)
    no_file.setup()
    assert no_file.unlabelled == 5 and no_file.skipped == dm.skipped  # a missing manifest is not an item
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        DicomDataModule(min_samples=1, root=real_folder, labels="missing.csv", image_size=8).setup()
