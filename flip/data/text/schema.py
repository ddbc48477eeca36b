"""Schema of `data=text` (clinical notes from files, JSONL/CSV or FHIR attachments), and its rules."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import DictConfig, OmegaConf

from flip.data.schema import SiteDataConfig

TEXT_DATA_TARGET = "flip.data.text.datamodule.TextDataModule"
FORMATS = ("folder", "jsonl", "csv", "fhir")
FHIR_VERSIONS = ("R4", "R4B", "R5")  # R4 is read with the R4B models
MAX_BUCKETS = 1 << 22


@dataclass
class TextDataConfig(SiteDataConfig):
    _target_: str = TEXT_DATA_TARGET
    # folder (.txt files + labels CSV), jsonl or csv (one file), fhir (NDJSON attachments).
    format: str = "folder"
    notes_dir: str = "notes"
    file: Optional[str] = None
    fhir_dir: str = "fhir"
    fhir_version: str = "R4B"
    # Labels CSV, relative to the site folder: by note (folder) or by patient (fhir).
    labels: Optional[str] = "notes/labels.csv"
    id_column: str = "note_id"
    path_column: str = "path"
    text_column: str = "text"
    label_column: str = "label"
    patient_column: str = "patient"
    # Hashed n-gram tokenisation: the same at every site, no vocabulary to share.
    num_buckets: int = 16384
    ngram_range: List[int] = field(default_factory=lambda: [1, 2])
    max_tokens: int = 512
    lowercase: bool = True


SCHEMAS: Dict[str, type] = {"data/text": TextDataConfig}


def text_problems(data_cfg: Any) -> list[str]:
    """Cross-key problems of a `data=text` node, as `data.<key>: ...` lines; [] for other sources."""
    data = _plain(data_cfg)
    if data.get("_target_") != TEXT_DATA_TARGET:
        return []
    problems = source_problems(data.get("format"), data.get("fhir_version"), data.get("file"))
    problems += tokenizer_problems(data.get("num_buckets"), data.get("ngram_range") or [], data.get("max_tokens"))
    return [f"data.{problem}" for problem in problems]


def _plain(node: Any) -> dict:
    if OmegaConf.is_config(node):
        return OmegaConf.to_container(node, resolve=True)
    return dict(node or {})


def source_problems(format: Any, fhir_version: Any, file: Any) -> list[str]:
    """What is wrong with the text source settings, as `key: message` lines."""
    problems = []
    if format not in FORMATS:
        problems.append(f"format: '{format}' is not a text format (available: {', '.join(FORMATS)})")
    if fhir_version not in FHIR_VERSIONS:
        problems.append(f"fhir_version: '{fhir_version}' is not one of {', '.join(FHIR_VERSIONS)}")
    if format in ("jsonl", "csv") and not file:
        problems.append(f"file: format {format} needs the file of notes (relative to the site folder)")
    return problems


def tokenizer_problems(num_buckets: Any, ngram_range: Any, max_tokens: Any) -> list[str]:
    """What is wrong with the hashed n-gram settings, as `key: message` lines."""
    problems = []
    if not _is_int(num_buckets) or not 16 <= num_buckets <= MAX_BUCKETS:
        problems.append(f"num_buckets: must be an int between 16 and {MAX_BUCKETS}, got {num_buckets}")
    pair = list(ngram_range) if isinstance(ngram_range, (list, tuple)) else []
    if len(pair) != 2 or not all(map(_is_int, pair)) or not 1 <= pair[0] <= pair[1] <= 5:
        problems.append(f"ngram_range: must be [min, max] with 1 <= min <= max <= 5, got {ngram_range}")
    if not _is_int(max_tokens) or max_tokens < 1:
        problems.append(f"max_tokens: must be at least 1, got {max_tokens}")
    return problems


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def rules(cfg: DictConfig) -> list[str]:
    """`text_problems` of the data node ([] for other sources)."""
    return text_problems(cfg.data)
