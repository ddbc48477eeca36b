"""Schema of `data=dicom` and `data=synthetic_dicom`: a folder of DICOM Part-10 files and its labels."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

from flip.data.schema import SiteDataConfig


@dataclass
class DicomDataConfig(SiteDataConfig):
    _target_: str = "flip.data.dicom.datamodule.DicomDataModule"
    batch_size: int = 16
    # Sub-folder of the site folder that holds the DICOM files (null: the whole site folder).
    dicom_dir: Optional[str] = None
    # Labels CSV (relative to the site folder, or absolute); null with label_attribute reads labels from headers.
    labels: Optional[str] = "labels.csv"
    key_column: str = "SOPInstanceUID"
    label_column: str = "label"
    patient_column: str = "PatientID"
    image_size: int = 64
    window_center: Optional[float] = None
    window_width: Optional[float] = None
    # image: one 2-D item per file (multi-frame: `frames` first, middle or all); volume: one item per series.
    mode: str = "image"
    channels: int = 1
    frames: str = "middle"
    volume_size: Optional[List[int]] = None
    # Labels from a header attribute instead of a CSV: its values mapped to classes.
    label_attribute: Optional[str] = None
    label_map: Optional[Dict[str, int]] = None
    num_classes: Optional[int] = None
    require_labels: bool = True
    # Keep decoded, preprocessed pixels in flip's cache, keyed by file content and settings.
    cache: bool = True


SCHEMAS: Dict[str, type] = {"data/dicom": DicomDataConfig}
