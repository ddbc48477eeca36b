"""3-D series: slices grouped by SeriesInstanceUID, ordered in space, resampled to a fixed grid.

Slices are ordered by ImagePositionPatient projected on the slice normal (the cross product of
the ImageOrientationPatient row and column directions), else by InstanceNumber, else by path.
A series whose slices differ in size or orientation, or share a position, is not a volume and is
reported. Each slice gets its modality LUT; the window (configured, else the middle slice's
header window, else the series' min-max) applies to the whole volume, then MONOCHROME1 inversion.
Resampling to `volume_size` [D, H, W] is separable trilinear: bilinear (antialiased) in-plane, then
linear along the slice normal at the slices' own positions, so uneven spacing and gaps are
interpolated where they are. One multi-frame object is a series of its frames, in stored order.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import torch

from flip.data.dicom.pixels import (
    GREY,
    PixelError,
    colour_unit,
    decode,
    header_window,
    min_max,
    modality_values,
    resize,
    to_channels,
    windowed,
)


class SeriesError(ValueError):
    """A group of slices that is not one volume; the message is the reason."""


@dataclass(frozen=True)
class Slice:
    relative: str  # path from the site folder
    path: Path
    sha: str
    meta: dict[str, str]


def series_key(slices: list[Slice]) -> str:
    """sha256 over the sorted content hashes of a series' files."""
    return hashlib.sha256("\n".join(sorted(s.sha for s in slices)).encode()).hexdigest()


def group_series(slices: list[Slice]) -> dict[str, list[Slice]]:
    """Slices by SeriesInstanceUID (a file without one is a series of its own), sorted by path."""
    groups: dict[str, list[Slice]] = {}
    for item in sorted(slices, key=lambda s: s.relative):
        groups.setdefault(item.meta.get("SeriesInstanceUID") or f"file:{item.relative}", []).append(item)
    return groups


def numbers(text: str) -> list[float] | None:
    """A backslash-separated DS/IS value as floats, or None when absent or malformed."""
    try:
        values = [float(part) for part in text.split("\\")] if text else []
    except ValueError:
        return None
    return values or None


def order_slices(slices: list[Slice]) -> tuple[list[Slice], list[float] | None]:
    """Slices in spatial order and their positions along the slice normal in mm (None: no geometry)."""
    check_sizes(slices)
    geometry = [(numbers(s.meta.get("ImagePositionPatient", "")), numbers(s.meta.get("ImageOrientationPatient", ""))) for s in slices]
    if all(position and len(position) == 3 and orientation and len(orientation) == 6 for position, orientation in geometry):
        return by_position(slices, geometry)
    instance = [numbers(s.meta.get("InstanceNumber", "")) for s in slices]
    key = (lambda i: (instance[i][0], slices[i].relative)) if all(instance) else (lambda i: slices[i].relative)
    return [slices[i] for i in sorted(range(len(slices)), key=key)], None


def check_sizes(slices: list[Slice]) -> None:
    """Raise SeriesError unless every slice has the same Rows x Columns."""
    sizes: dict[str, int] = {}
    for item in slices:
        size = f"{item.meta.get('Rows', '?')}x{item.meta.get('Columns', '?')}"
        sizes[size] = sizes.get(size, 0) + 1
    if len(sizes) > 1:
        counts = ", ".join(f"{size} ({count} slice{'s' * (count > 1)})" for size, count in sorted(sizes.items()))
        raise SeriesError(f"inconsistent slice sizes in series: {counts}")


def by_position(slices: list[Slice], geometry: list[tuple[list[float], list[float]]]) -> tuple[list[Slice], list[float]]:
    orientations = np.array([orientation for _, orientation in geometry])
    if np.abs(orientations - orientations[0]).max() > 1e-3:
        distinct = len({tuple(np.round(o, 3)) for o in orientations})
        raise SeriesError(f"slices have {distinct} different ImageOrientationPatient values: not one volume")
    normal = np.cross(orientations[0][:3], orientations[0][3:])
    positions = np.array([position for position, _ in geometry]) @ normal
    order = np.argsort(positions, kind="stable")
    ordered = positions[order]
    if len(ordered) > 1 and np.min(np.diff(ordered)) < 1e-3:
        raise SeriesError(f"{len(ordered) - len(np.unique(np.round(ordered, 3)))} slice(s) share a position with another")
    return [slices[i] for i in order], [float(p) for p in ordered]


def frame_count(item: Slice) -> int:
    value = numbers(item.meta.get("NumberOfFrames", ""))
    return int(value[0]) if value else 1


def read_slices(ordered: list[Slice]) -> tuple[list[torch.Tensor], pydicom.Dataset, bool]:
    """Per slice (or per frame of one multi-frame object): [C, H, W] values, the middle dataset,
    and whether they are grey modality values (True) or colour in [0, 1] (False)."""
    if len(ordered) > 1 and any(frame_count(item) > 1 for item in ordered):
        raise SeriesError("series mixes multi-frame objects with other slices")
    tensors, kinds, datasets = [], set(), []
    for item in ordered:
        ds = pydicom.dcmread(io.BytesIO(item.path.read_bytes()))
        try:
            frames, grey = slice_values(ds)
        except PixelError as error:
            raise SeriesError(f"slice {item.relative}: {error}") from error
        tensors.extend(frames)
        kinds.add(grey)
        datasets.append(ds)
    if len(kinds) > 1:
        raise SeriesError("series mixes greyscale and colour slices")
    return tensors, datasets[len(datasets) // 2], kinds.pop()


def slice_values(ds: pydicom.Dataset) -> tuple[list[torch.Tensor], bool]:
    """All frames as [C, H, W]: rescaled modality values for grey, [0, 1] RGB for colour."""
    array, photometric = decode(ds, "all")
    if photometric in GREY:
        values, slope, intercept = modality_values(array, ds)
        return list(values.mul_(slope).add_(intercept)), True
    return list(colour_unit(array, photometric, ds)), False


def window_volume(volume: torch.Tensor, ds: pydicom.Dataset, window: tuple[float, float] | None) -> torch.Tensor:
    """Grey modality values to [0, 1]: one window (given, else header) or min-max for the whole series."""
    window = window or header_window(ds)
    unit = windowed(volume, 1.0, 0.0, *window, ds.get("VOILUTFunction") or "LINEAR") if window else min_max(volume)
    return 1.0 - unit if ds.get("PhotometricInterpretation") == "MONOCHROME1" else unit


def header_spacing(ds: pydicom.Dataset) -> float:
    """Slice spacing from SpacingBetweenSlices, else SliceThickness, else 1 mm."""
    for keyword in ("SpacingBetweenSlices", "SliceThickness"):
        value = numbers(str(ds.get(keyword) or ""))
        if value and value[0] > 0:
            return value[0]
    return 1.0


def pixel_spacing(ds: pydicom.Dataset) -> tuple[float, float]:
    """(row, column) spacing in mm from PixelSpacing, else 1 mm."""
    value = numbers("\\".join(str(v) for v in ds.get("PixelSpacing") or []))
    return (value[0], value[1]) if value and len(value) == 2 else (1.0, 1.0)


def depth_weights(source: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For `depth` evenly spread samples over slices at coordinates `source` (k for even spacing):
    the slice below, the slice above and the weight of the one above (pixel-centre convention)."""
    target = np.clip((np.arange(depth) + 0.5) * (source[-1] + 1.0) / depth - 0.5, 0.0, source[-1])
    if len(source) == 1:
        zeros = np.zeros(depth, dtype=np.int64)
        return zeros, zeros, np.zeros(depth)
    upper = np.clip(np.searchsorted(source, target, side="right"), 1, len(source) - 1)
    lower = upper - 1
    weight = np.clip((target - source[lower]) / (source[upper] - source[lower]), 0.0, 1.0)
    return lower, upper, weight


def resample(slices: torch.Tensor, positions: list[float], size: tuple[int, int, int]) -> torch.Tensor:
    """[N, C, H, W] slices at `positions` to [C, D, H', W']: bilinear in-plane, linear along positions."""
    planes = resize(slices, (size[1], size[2]))
    step = float(np.median(np.diff(positions))) if len(positions) > 1 else 1.0
    lower, upper, weight = depth_weights((np.asarray(positions) - positions[0]) / step, size[0])
    weight = torch.from_numpy(weight.astype(np.float32)).view(-1, 1, 1, 1)
    volume = planes[torch.from_numpy(lower)] * (1 - weight) + planes[torch.from_numpy(upper)] * weight
    return volume.permute(1, 0, 2, 3).contiguous().clamp_(0.0, 1.0)


def build_volume(
    ordered: list[Slice], positions: list[float] | None, size: tuple[int, int, int], window: tuple[float, float] | None, channels: int
) -> tuple[torch.Tensor, tuple[float, float, float]]:
    """The series as float32 [channels, D, H, W] in [0, 1] and its output voxel spacing (mm)."""
    tensors, middle, grey = read_slices(ordered)
    if positions is None or len(positions) != len(tensors):  # no geometry, or one multi-frame object
        between = header_spacing(middle)
        positions = [i * between for i in range(len(tensors))]
    stacked = torch.stack(tensors)
    unit = window_volume(stacked, middle, window) if grey else stacked
    volume = resample(to_channels(unit, channels), positions, size)
    step = float(np.median(np.diff(positions))) if len(positions) > 1 else header_spacing(middle)
    row, column = pixel_spacing(middle)
    rows, columns = stacked.shape[-2:]
    extent = positions[-1] - positions[0] + step
    return volume, (extent / size[0], row * rows / size[1], column * columns / size[2])
