"""DICOM pixels to model inputs: decode, modality LUT, VOI window, colour, frames, resize.

Every decode goes through pydicom's pixel decoders (pylibjpeg, openjpeg and RLE plugins for the
compressed transfer syntaxes). Greyscale images get the modality LUT, then a VOI window (the
configured one, else the header's first window, else the header's VOI LUT, else min-max) and
MONOCHROME1 inversion, so bright always means dense. Colour images (RGB, YBR_FULL/_422 converted
with pydicom's `convert_color_space`, PALETTE COLOR with `apply_color_lut`) are scaled by their
bit depth and turned grey with ITU-R BT.601 weights unless three channels are kept. Outputs are
float32 in [0, 1], shaped [frames, channels, size, size].
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator

import numpy as np
import pydicom
import torch
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, convert_color_space, get_decoder
from pydicom.pixels.utils import get_nr_frames
from pydicom.uid import UID

# Decode attempts in this process (failed ones too); tests count them to prove the disk cache is used.
DECODES = 0
_DECODES_LOCK = threading.Lock()

FRAMES = ("first", "middle", "all")
CHANNELS = (1, 3)
BT601 = (0.299, 0.587, 0.114)
GREY = ("MONOCHROME1", "MONOCHROME2")
YBR_FULL = ("YBR_FULL", "YBR_FULL_422")
# Value representations stored as backslash-separated text in the character repertoire.
TEXT_VRS = frozenset(("AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "SH", "TM", "UI"))
# Transfer syntaxes newer than pydicom's UID dictionary, named so reasons stay readable.
NEWER_SYNTAXES = {
    "1.2.840.10008.1.2.4.110": "JPEG XL Lossless",
    "1.2.840.10008.1.2.4.111": "JPEG XL JPEG Recompression",
    "1.2.840.10008.1.2.4.112": "JPEG XL",
    "1.2.840.10008.1.2.8.1": "Deflated Image Frame Compression",
}


class PixelError(ValueError):
    """The pixels of a file cannot be turned into an image; the message is the reason."""


@functools.cache
def keyword_tag(keyword: str) -> int:
    return tag_for_keyword(keyword)


def raw_text(ds: pydicom.Dataset, keyword: str) -> str | None:
    """A text element's value read straight from its bytes ("" when absent; parts stripped, joined
    by backslashes), or None when pydicom must convert it: not text, already converted, or not
    plain ASCII (a character set applies).

    pydicom's conversion of each element (decoding, validation, value classes) costs more than
    the rest of a file's header bookkeeping.
    """
    element = ds.get_item(keyword_tag(keyword))
    if element is None:
        return ""
    value = element.value
    if not isinstance(value, bytes) or not value.isascii() or b"\x1b" in value:
        return None
    if (element.VR or dictionary_VR(element.tag)) not in TEXT_VRS:
        return None
    return "\\".join(part.strip(" \x00") for part in value.decode("ascii").split("\\"))


def header_number(ds: pydicom.Dataset, keyword: str) -> float | None:
    """A single-valued DS/IS element as a float, None when absent or empty."""
    text = raw_text(ds, keyword)
    value = ds.get(keyword) if text is None else text
    return float(value) if value not in (None, "") else None


def transfer_syntax(ds: pydicom.Dataset) -> UID | None:
    """The dataset's transfer syntax UID, or None when its file meta lacks one."""
    uid = getattr(ds, "file_meta", {}).get("TransferSyntaxUID")
    return UID(str(uid)) if uid else None


@functools.cache
def transfer_syntax_name(uid: str | None) -> str:
    """A readable name: pydicom's, else flip's table of newer syntaxes, else the UID itself."""
    if not uid:
        return "no transfer syntax"
    name = UID(str(uid)).name
    return NEWER_SYNTAXES.get(str(uid), name) if name == str(uid) else name


@functools.cache
def decoder_problem(uid: UID | None) -> str | None:
    """Why pixels of this transfer syntax cannot be decoded here, or None when a decoder is ready."""
    if uid is None:
        return "cannot decode pixel data: no (0002,0010) 'Transfer Syntax UID' in the file meta"
    name = transfer_syntax_name(uid)
    label = f"{name} ({uid})" if name != str(uid) else f"transfer syntax {uid}"
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        return f"no decoder installed for {label}: pydicom has none for it"
    if not decoder.is_available:
        return f"no decoder installed for {label}: needs {'; '.join(decoder.missing_dependencies)}"
    return None


def frame_index(ds: pydicom.Dataset, frames: str) -> int | None:
    """The frame to decode (first or middle), or None for all of them."""
    if frames not in FRAMES:
        raise ValueError(f"frames must be one of {FRAMES}, not {frames!r}")
    if frames == "all":
        return None
    return 0 if frames == "first" else int(get_nr_frames(ds, warn=False)) // 2


def decode(ds: pydicom.Dataset, frames: str = "middle") -> tuple[np.ndarray, str]:
    """Decoded stored values [frames, rows, columns(, samples)] and their photometric interpretation.

    Raises PixelError with the reason: a missing decoder names the transfer syntax, a failing one
    repeats pydicom's own message after the transfer syntax name.
    """
    global DECODES
    uid = transfer_syntax(ds)
    problem = decoder_problem(uid)
    if problem:
        raise PixelError(problem)
    with _DECODES_LOCK:
        DECODES += 1
    try:
        index = frame_index(ds, frames)
        decoder = get_decoder(uid)  # the runner reads the pixel options from the dataset itself
        array, properties = decoder.as_array(ds, index=index, raw=True, view_only=viewable(decoder, ds))
    except Exception as error:  # decoders raise many kinds for damaged or odd pixel data
        raise PixelError(f"cannot decode {transfer_syntax_name(uid)} pixel data: {describe(error)}") from error
    samples = int(properties["samples_per_pixel"])
    if array.ndim == (2 if samples == 1 else 3):
        array = array[None]
    return array, str(properties["photometric_interpretation"])


def viewable(decoder, ds: pydicom.Dataset) -> bool:
    """Native pixels can be viewed, not copied (values are converted next), unless pydicom must
    mask unused high bits."""
    return decoder.is_native and ds.get("BitsStored") == ds.get("BitsAllocated")


def describe(error: BaseException) -> str:
    """`Type: message` on one line."""
    return f"{type(error).__name__}: {' '.join(str(error).split())}"


# -- values in [0, 1]


def grey_resized(array: np.ndarray, ds: pydicom.Dataset, window: tuple[float, float] | None, size: tuple[int, int]) -> torch.Tensor:
    """Grey stored values [F, H, W] to [F, 1, *size] in [0, 1]: modality LUT, VOI, MONOCHROME1 inversion.

    The window (given, else the header's first, else the header's VOI LUT) applies at full
    resolution before resizing. Without one, min-max scaling is affine and the resize a convex
    combination, so scaling the resized image by the full image's range is the same, and cheaper.
    """
    values, slope, intercept = modality_values(array, ds)
    window = window or header_window(ds)
    if window is not None:
        unit = resize(windowed(values, slope, intercept, *window, ds.get("VOILUTFunction") or "LINEAR"), size)
    elif "VOILUTSequence" in ds:
        modality = np.rint(values.mul_(slope).add_(intercept).numpy()).astype(np.int64)
        unit = resize(min_max(torch.from_numpy(np.asarray(apply_voi_lut(modality, ds), dtype=np.float32))), size)
    else:  # the range of values * slope + intercept maps onto [0, 1] as the range of values does (slope > 0)
        low, high = value_range(values)  # while the values are still in the CPU cache
        unit = scale_range(interpolate(values, size), low, high)
    return 1.0 - unit if ds.get("PhotometricInterpretation") == "MONOCHROME1" else unit


def modality_values(array: np.ndarray, ds: pydicom.Dataset) -> tuple[torch.Tensor, float, float]:
    """Float32 [F, 1, H, W] values (a new tensor) and the linear rescale (slope, intercept) still to
    apply to them.

    A linear rescale is returned, not applied, so windowing fuses it into one multiply-add; a
    Modality LUT Sequence is applied here with pydicom.
    """
    if "ModalityLUTSequence" in ds:
        values = np.array(apply_modality_lut(array, ds), dtype=np.float32)
        return torch.from_numpy(values)[:, None], 1.0, 0.0
    slope = header_number(ds, "RescaleSlope") or 1.0
    intercept = header_number(ds, "RescaleIntercept") or 0.0
    values = torch.from_numpy(np.array(array, dtype=np.float32))[:, None]
    if slope < 0:  # keep slope > 0 so min-max needs no rescale: v = (-x) * (-slope) + intercept
        values, slope = values.neg_(), -slope
    return values, slope, intercept


def header_window(ds: pydicom.Dataset) -> tuple[float, float] | None:
    """The first Window Center/Width pair of the header, or None."""
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return None
    try:
        return first(ds.WindowCenter), first(ds.WindowWidth)
    except (TypeError, ValueError, IndexError):
        return None


def first(value) -> float:
    """The first value of a possibly multi-valued DS element."""
    return float(value[0]) if isinstance(value, MultiValue | list | tuple) else float(value)


def windowed(values: torch.Tensor, slope: float, intercept: float, center: float, width: float, function: str) -> torch.Tensor:
    """DICOM PS3.3 C.11.2.1.2 VOI windowing of `values * slope + intercept` onto [0, 1]."""
    function = str(function).upper()
    if function == "SIGMOID":
        return torch.sigmoid(values.mul_(4 * slope / width).add_(4 * (intercept - center) / width))
    if function == "LINEAR_EXACT":
        scale, offset = slope / width, (intercept - center) / width + 0.5
    elif width <= 1:  # a LINEAR window of width 1 is a threshold at center - 0.5
        return (values.mul_(slope).add_(intercept) > center - 0.5).float()
    else:
        scale, offset = slope / (width - 1), (intercept - center + 0.5) / (width - 1) + 0.5
    return values.mul_(scale).add_(offset).clamp_(0.0, 1.0)


def min_max(values: torch.Tensor) -> torch.Tensor:
    """Scale into [0, 1] by the tensor's own range; a constant image becomes zeros."""
    return scale_range(values, *value_range(values))


def value_range(values: torch.Tensor) -> tuple[float, float]:
    """(min, max) of a tensor; numpy's vectorised reductions beat torch.aminmax on one thread."""
    array = values.numpy()
    return float(array.min()), float(array.max())


def scale_range(values: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Map [low, high] onto [0, 1] in place (zeros when the range is empty)."""
    if not high > low:
        return values.zero_()
    return values.sub_(low).div_(high - low).clamp_(0.0, 1.0)


def colour_unit(array: np.ndarray, photometric: str, ds: pydicom.Dataset) -> torch.Tensor:
    """RGB, YBR_FULL/_422 or PALETTE COLOR stored values to RGB float32 [F, 3, H, W] in [0, 1]."""
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(array, ds)[..., :3]
        bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
    elif photometric in YBR_FULL:
        rgb, bits = convert_color_space(array, "YBR_FULL", "RGB"), 8
    elif photometric == "RGB":
        rgb, bits = array, int(ds.get("BitsStored") or ds.BitsAllocated)
    else:
        raise PixelError(f"unsupported PhotometricInterpretation {photometric!r} (flip reads MONOCHROME1/2, RGB, "
                         "YBR_FULL, YBR_FULL_422 and PALETTE COLOR)")  # fmt: skip
    if rgb.ndim != 4 or rgb.shape[-1] != 3:
        raise PixelError(f"{photometric} pixels of shape {rgb.shape[1:]} are not 3-sample colour")
    unit = torch.from_numpy(np.asarray(rgb, dtype=np.float32)).div_(float(2**bits - 1))
    return unit.permute(0, 3, 1, 2).clamp_(0.0, 1.0).contiguous()


def to_channels(unit: torch.Tensor, channels: int) -> torch.Tensor:
    """[F, C, H, W] with C in (1, 3) to `channels`: BT.601 grey, or grey repeated three times."""
    if channels not in CHANNELS:
        raise ValueError(f"channels must be 1 or 3, not {channels!r}")
    if unit.shape[1] == channels:
        return unit
    if channels == 3:
        return unit.expand(-1, 3, -1, -1).contiguous()
    weights = torch.tensor(BT601, dtype=unit.dtype).view(1, 3, 1, 1)
    return (unit * weights).sum(dim=1, keepdim=True).clamp_(0.0, 1.0)


def interpolate(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear, antialiased resize of [N, C, H, W] to `size`; the same tensor at the same size."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return torch.nn.functional.interpolate(images, size=size, mode="bilinear", antialias=True, align_corners=False)


def resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """`interpolate`, clamped to [0, 1] (rounding aside, a convex combination stays in range)."""
    return interpolate(images, size).clamp_(0.0, 1.0)


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Per-image tensor work runs faster on one thread than split over several; restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# -- whole images


def load_frames(
    ds: pydicom.Dataset,
    image_size: int,
    window_center: float | None = None,
    window_width: float | None = None,
    channels: int = 1,
    frames: str = "middle",
) -> torch.Tensor:
    """Decode and preprocess a dataset's frame(s) into float32 [F, channels, image_size, image_size]."""
    array, photometric = decode(ds, frames)
    window = (window_center, window_width) if window_center is not None and window_width is not None else None
    size = (image_size, image_size)
    if photometric in GREY:
        return to_channels(grey_resized(array, ds, window, size), channels)
    return resize(to_channels(colour_unit(array, photometric, ds), channels), size)


def load_image(
    ds: pydicom.Dataset,
    image_size: int,
    window_center: float | None = None,
    window_width: float | None = None,
    channels: int = 1,
    frames: str = "middle",
) -> torch.Tensor:
    """One frame (the middle one by default) as float32 [channels, image_size, image_size] in [0, 1]."""
    if frames == "all":
        raise ValueError("load_image returns one frame: use frames='first' or 'middle', or load_frames")
    return load_frames(ds, image_size, window_center, window_width, channels, frames)[0]
