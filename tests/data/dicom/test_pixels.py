"""Pixels as the DICOM standard says: modality and VOI LUTs, windows, colour, bit depths, frames, compression."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from pydicom.filebase import DicomFileLike
from pydicom.filewriter import write_dataset, write_file_meta_info

from flip.data.dicom.datamodule import DicomDataModule, load_image
from flip.data.dicom.pixels import load_frames

from tests.data.dicom.conftest import dicom_linear_window, pydicom_file, write_csv




def test_rescale_window_and_monochrome1_match_an_independent_computation():
    ds = pydicom.dcmread(pydicom_file("6154"))  # MONOCHROME1, slope 0.684, intercept 200, window 1600/2800
    assert ds.PhotometricInterpretation == "MONOCHROME1" and ds.Rows == ds.Columns == 16
    values = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    expected = 1.0 - dicom_linear_window(values, float(ds.WindowCenter), float(ds.WindowWidth))
    image = load_image(ds, 16)
    assert image.shape == (1, 16, 16)
    np.testing.assert_allclose(image[0].numpy(), expected, atol=1e-6)


def test_configured_window_overrides_and_min_max_is_the_fallback():
    ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))  # slope 1, intercept -1024, no window in the header
    hounsfield = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    windowed = load_image(ds, 128, window_center=40, window_width=400)
    np.testing.assert_allclose(windowed[0].numpy(), dicom_linear_window(hounsfield, 40, 400), atol=1e-6)
    fallback = load_image(ds, 128)
    expected = (hounsfield - hounsfield.min()) / (hounsfield.max() - hounsfield.min())
    np.testing.assert_allclose(fallback[0].numpy(), expected, atol=1e-6)


def test_load_image_resizes_to_the_requested_size():
    image = load_image(pydicom.dcmread(pydicom_file("MR_small.dcm")), 24)
    assert image.shape == (1, 24, 24) and image.dtype == torch.float32
    assert 0.0 <= image.min() < image.max() <= 1.0


def bt601(rgb: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma of [..., 3] values."""
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def test_rgb_is_bt601_grey_or_three_channels():
    ds = pydicom.dcmread(pydicom_file("SC_rgb_small_odd.dcm"))  # 3x3 RGB, 8 bits
    rgb = ds.pixel_array.astype(np.float64) / 255
    np.testing.assert_allclose(load_image(ds, 3)[0].numpy(), bt601(rgb), atol=1e-6)
    np.testing.assert_allclose(load_image(ds, 3, channels=3).numpy(), rgb.transpose(2, 0, 1), atol=1e-6)


def test_ybr_full_422_is_converted_as_the_standard_says():
    ds = pydicom.dcmread(pydicom_file("SC_ybr_full_422_uncompressed.dcm"))
    ybr = pydicom.pixels.pixel_array(ds, raw=True).astype(np.float64)  # Y, Cb, Cr with the 4:2:2 expanded
    y, cb, cr = ybr[..., 0], ybr[..., 1] - 128, ybr[..., 2] - 128
    rgb = np.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], axis=-1)  # PS3.3 C.7.6.3.1.2
    rgb = np.clip(rgb, 0, 255) / 255
    image = load_image(ds, 100, channels=3).numpy()
    np.testing.assert_allclose(image, rgb.transpose(2, 0, 1), atol=0.51 / 255)  # pydicom rounds to uint8
    np.testing.assert_allclose(load_image(ds, 100)[0].numpy(), bt601(rgb), atol=0.51 / 255)


def test_palette_colour_is_looked_up_in_the_lut():
    ds = pydicom.dcmread(pydicom_file("examples_palette.dcm"))  # 8-bit indices, 16-bit LUT entries
    entries, first, bits = ds.RedPaletteColorLookupTableDescriptor
    luts = [np.frombuffer(ds[f"{c}PaletteColorLookupTableData"].value, dtype="<u2") for c in ("Red", "Green", "Blue")]
    index = np.clip(ds.pixel_array.astype(np.int64) - first, 0, entries - 1)
    rgb = np.stack([lut[index] for lut in luts], axis=-1) / (2**bits - 1)
    grey = torch.from_numpy(bt601(rgb)).float()[None, None]
    expected = torch.nn.functional.interpolate(grey, size=(32, 32), mode="bilinear", antialias=True, align_corners=False)
    np.testing.assert_allclose(load_image(ds, 32)[0].numpy(), expected[0, 0].numpy(), atol=1e-5)


def independent_grey(ds: pydicom.Dataset) -> np.ndarray:
    """Rescale, then the header window (DICOM linear) or min-max, then MONOCHROME1 inversion."""
    values = ds.pixel_array.astype(np.float64) * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))
    if "WindowCenter" in ds:
        unit = dicom_linear_window(values, float(ds.WindowCenter), float(ds.WindowWidth))
    else:
        unit = (values - values.min()) / (values.max() - values.min())
    return 1 - unit if ds.PhotometricInterpretation == "MONOCHROME1" else unit


@pytest.mark.parametrize(
    ("name", "bits", "signed"),
    [
        ("liver_1frame.dcm", 1, 0),  # SEG, 1 bit packed
        ("image_dfl.dcm", 8, 0),  # deflated transfer syntax
        ("6278", 12, 0),  # MONOCHROME1 CR
        ("693_J2KI.dcm", 14, 1),  # JPEG 2000, header window
        ("CT_small.dcm", 16, 1),
        ("MR_small_bigendian.dcm", 16, 1),  # big endian, header window
        ("rtdose_1frame.dcm", 32, 0),
    ],
)
def test_bit_depths_and_signedness_match_an_independent_computation(name, bits, signed):
    ds = pydicom.dcmread(pydicom_file(name))
    assert (ds.BitsStored, ds.PixelRepresentation) == (bits, signed)
    image = load_image(ds, ds.Rows)
    assert image.shape == (1, ds.Rows, ds.Columns)
    np.testing.assert_allclose(image[0].numpy(), independent_grey(ds), atol=2e-6)


def test_lossless_compression_decodes_to_the_uncompressed_image():
    reference = load_image(pydicom.dcmread(pydicom_file("MR_small.dcm")), 64)
    for name in ("MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_expb.dcm"):
        ds = pydicom.dcmread(pydicom_file(name))
        assert torch.equal(load_image(ds, 64), reference), ds.file_meta.TransferSyntaxUID.name


def test_frames_option_picks_the_first_the_middle_or_all_frames():
    ds = pydicom.dcmread(pydicom_file("rtdose.dcm"))  # 15 frames of 10x10, no window: min-max over what is decoded
    frames = ds.pixel_array.astype(np.float64)

    def min_max(values):
        return (values - values.min()) / (values.max() - values.min())

    np.testing.assert_allclose(load_image(ds, 10, frames="first")[0].numpy(), min_max(frames[0]), atol=1e-6)
    np.testing.assert_allclose(load_image(ds, 10)[0].numpy(), min_max(frames[7]), atol=1e-6)
    everything = load_frames(ds, 10, frames="all")
    assert everything.shape == (15, 1, 10, 10)
    np.testing.assert_allclose(everything[:, 0].numpy(), min_max(frames), atol=1e-6)


def test_frames_all_makes_one_item_per_frame(tmp_path):
    shutil.copy(pydicom_file("SC_rgb_rle_2frame.dcm"), tmp_path / "cine.dcm")
    write_csv(tmp_path / "labels.csv", [{"path": "cine.dcm", "label": 1}])
    dm = DicomDataModule(min_samples=1, root=tmp_path, key_column="path", image_size=8, frames="all", val_fraction=0, test_fraction=0)
    dm.setup()
    assert dm.num_items_found == 2 and dm.label_counts == {1: 2}
    images = dm.datasets["train"].tensors[0]
    rgb = pydicom.dcmread(tmp_path / "cine.dcm").pixel_array.astype(np.float32) / 255
    expected = torch.nn.functional.interpolate(torch.from_numpy(bt601(rgb))[:, None].float(), size=(8, 8), mode="bilinear", antialias=True)
    np.testing.assert_allclose(images.numpy(), expected.numpy(), atol=1e-5)
    assert dm.files_used == ["cine.dcm"]


@pytest.mark.parametrize(
    ("function", "expected"),
    [
        ("LINEAR_EXACT", lambda v, c, w: np.clip((v - c) / w + 0.5, 0, 1)),
        ("SIGMOID", lambda v, c, w: 1 / (1 + np.exp(-4 * (v - c) / w))),
    ],
)
def test_voi_lut_functions_of_the_header(function, expected):
    ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    ds.VOILUTFunction = function
    hounsfield = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    image = load_image(ds, 128, window_center=40, window_width=400)
    np.testing.assert_allclose(image[0].numpy(), expected(hounsfield, 40, 400), atol=2e-6)


def test_a_voi_lut_sequence_applies_when_the_header_has_no_window():
    ds = pydicom.dcmread(pydicom_file("MR_small.dcm"))
    del ds.WindowCenter, ds.WindowWidth
    lut = np.round(65535 * (np.arange(4096) / 4095) ** 0.5).astype(np.uint16)  # a gamma curve
    item = pydicom.Dataset()
    item.LUTDescriptor, item.LUTData = [4096, 0, 16], lut.tolist()
    ds.VOILUTSequence = [item]
    looked_up = lut[np.clip(ds.pixel_array, 0, 4095)].astype(np.float64)
    expected = (looked_up - looked_up.min()) / (looked_up.max() - looked_up.min())
    np.testing.assert_allclose(load_image(ds, 64)[0].numpy(), expected, atol=1e-6)


def with_transfer_syntax(source: Path, target: Path, uid: str) -> Path:
    """A copy of a real explicit VR little endian file whose file meta claims another transfer
    syntax (written element by element: pydicom's save_as refuses syntaxes it does not know)."""
    ds = pydicom.dcmread(source)
    assert ds.original_encoding == (False, True)
    ds.file_meta.TransferSyntaxUID = uid
    with target.open("wb") as raw:
        out = DicomFileLike(raw)
        out.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(out, ds.file_meta)
        out.is_little_endian, out.is_implicit_VR = True, False
        write_dataset(out, ds)
    return target


@pytest.mark.parametrize(
    ("uid", "reason"),
    [
        ("1.2.840.10008.1.2.4.112", "no decoder installed for JPEG XL (1.2.840.10008.1.2.4.112): pydicom has none for it"),
        ("1.2.840.10008.1.2.4.92", "no decoder installed for JPEG 2000 Part 2 Multi-component Image Compression "
                                   "(Lossless Only) (1.2.840.10008.1.2.4.92): pydicom has none for it"),
    ],
)  # fmt: skip
def test_a_transfer_syntax_without_decoder_is_skipped_with_its_name(tmp_path, uid, reason):
    with_transfer_syntax(pydicom_file("SC_rgb_jpeg_gdcm.dcm"), tmp_path / "new.dcm", uid)
    shutil.copy(pydicom_file("CT_small.dcm"), tmp_path / "ct.dcm")
    dm = DicomDataModule(min_samples=1, root=tmp_path, labels=None, require_labels=False, image_size=8, val_fraction=0, test_fraction=0)
    dm.setup()
    assert dm.skipped == [("new.dcm", reason)]
    assert dm.transfer_syntaxes[reason.removeprefix("no decoder installed for ").split(" (1.2")[0]] == 1
