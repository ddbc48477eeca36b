"""3-D series: slices ordered along the slice normal, resampled, inconsistent ones skipped with reasons."""

from __future__ import annotations

import shutil
from pathlib import Path

import lightning as L
import numpy as np
import pydicom
import torch
from pydicom.uid import generate_uid

from flip.models.volume import VolumeClassifier

from tests.data.dicom.conftest import CT5N, MR2, copy_series, dicom_linear_window, volume_module, write_csv








def relabelled_series(folder: Path, index: int, patient: str) -> str:
    """A copy of CT5N as a new series (new Series/SOP Instance UIDs, patient); its SeriesInstanceUID."""
    series_uid = generate_uid(entropy_srcs=["series", str(index)])
    for path in sorted(CT5N.iterdir()):
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID, ds.PatientID = series_uid, patient
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[series_uid, path.name])
        ds.PixelData = np.roll(ds.pixel_array, index, axis=1).tobytes()  # the same anatomy, shifted
        (folder / series_uid).mkdir(parents=True, exist_ok=True)
        ds.save_as(folder / series_uid / f"{path.name}.dcm")
    return series_uid


def ct5n_by_position() -> tuple[list[pydicom.Dataset], np.ndarray]:
    """CT5N's slices sorted by z (the normal of their axial orientation), and the windowed volume."""
    slices = sorted((pydicom.dcmread(path) for path in CT5N.iterdir()), key=lambda ds: float(ds.ImagePositionPatient[2]))
    hounsfield = np.stack([ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for ds in slices])
    return slices, dicom_linear_window(hounsfield, float(slices[2].WindowCenter), float(slices[2].WindowWidth))




def test_a_series_is_ordered_by_position_along_the_slice_normal(tmp_path):
    copy_series(tmp_path)
    dm = volume_module(tmp_path, volume_size=[5, 16, 16])
    slices, expected = ct5n_by_position()
    assert [int(ds.InstanceNumber) for ds in slices] == [10, 9, 8, 7, 6]  # not InstanceNumber order
    (volume,) = dm.datasets["train"].tensors[0]
    assert volume.shape == (1, 5, 16, 16)
    np.testing.assert_allclose(volume[0].numpy(), expected, atol=2e-6)
    assert dm.num_items_found == 1 and len(dm.files_used) == 5 and dm.unlabelled == 1
    spacing = dm.volume_spacing[slices[0].SeriesInstanceUID]
    np.testing.assert_allclose(spacing, (2.5, float(slices[0].PixelSpacing[0]), float(slices[0].PixelSpacing[1])), rtol=1e-6)


def test_resampling_to_volume_size_is_trilinear(tmp_path):
    copy_series(tmp_path)
    dm = volume_module(tmp_path, volume_size=[12, 16, 16])
    _, native = ct5n_by_position()
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(native).float()[None, None], size=(12, 16, 16), mode="trilinear", align_corners=False
    )
    np.testing.assert_allclose(dm.datasets["train"].tensors[0].numpy(), expected.numpy(), atol=2e-6)
    smaller = volume_module(tmp_path, volume_size=[3, 8, 8], cache=False)
    assert smaller.datasets["train"].tensors[0].shape == (1, 1, 3, 8, 8)


def test_series_with_inconsistent_slices_are_skipped_with_reasons(tmp_path):
    paths = copy_series(tmp_path / "ct")
    ds = pydicom.dcmread(paths[0])
    ds.PixelData, ds.Rows, ds.Columns = np.ascontiguousarray(ds.pixel_array[::2, ::2]).tobytes(), 8, 8
    ds.save_as(paths[0])
    shutil.copytree(MR2, tmp_path / "mr")
    dm = volume_module(tmp_path, volume_size=[2, 8, 8])
    reasons = dict(dm.skipped)
    assert reasons["ct"] == f"series {ds.SeriesInstanceUID}: inconsistent slice sizes in series: 16x16 (4 slices), 8x8 (1 slice)"
    for first in ("4950", "6273"):  # two localizer series in one folder, each three orientations
        uid = pydicom.dcmread(MR2 / first).SeriesInstanceUID
        assert reasons[f"mr/{first} (+2 more)"] == f"series {uid}: slices have 3 different ImageOrientationPatient values: not one volume"
    assert len(reasons) == 3 and dm.found_files == 12
    assert dm.num_items_found == 1 and dm.files_used == ["mr/15970"]  # a series of one slice is a (thin) volume


def test_volumes_are_labelled_by_series_study_or_patient(tmp_path):
    uids = [relabelled_series(tmp_path, index, f"P{index // 2}") for index in range(4)]
    write_csv(tmp_path / "labels.csv", [{"PatientID": "P0", "label": 0}, {"PatientID": "P1", "label": 1}])
    dm = volume_module(tmp_path, key_column="PatientID", labels="labels.csv", require_labels=True, volume_size=[4, 8, 8])
    assert dm.label_counts == {0: 2, 1: 2} and dm.num_items_found == 4 and set(dm.volume_spacing) == set(uids)
    write_csv(tmp_path / "labels.csv", [{"SeriesInstanceUID": uid, "label": i % 2} for i, uid in enumerate(uids[:3])])
    by_series = volume_module(tmp_path, labels="labels.csv", require_labels=True, volume_size=[4, 8, 8])
    assert by_series.label_counts == {0: 2, 1: 1}
    assert by_series.skipped == [(uids[3], f"no label for SeriesInstanceUID {uids[3]!r}")]


def test_volume_classifier_trains_on_volumes(tmp_path):
    for index in range(6):
        relabelled_series(tmp_path, index, f"P{index}")
    dm = volume_module(tmp_path, label_attribute="PatientID", label_map={f"P{i}": i % 2 for i in range(6)},
                       volume_size=[4, 16, 16], batch_size=3, val_fraction=0.0, test_fraction=0.0)  # fmt: skip
    model = VolumeClassifier(channels=(4, 8), hidden=8, metrics=("accuracy",))
    trainer = L.Trainer(
        max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path, limit_val_batches=0,
    )  # fmt: skip
    trainer.fit(model, datamodule=dm)
    assert trainer.global_step == 2
    assert model(dm.datasets["train"].tensors[0]).shape == (6, 2)
