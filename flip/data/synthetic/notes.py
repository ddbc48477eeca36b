"""Clinical-style free-text notes for the synthetic patients.

The wording carries the patient's latent label only statistically: label-1 notes
mention pneumonia-like findings (productive cough, fever, crackles, consolidation)
more often, label-0 notes reassuring ones (clear lung fields, no acute findings),
and both draw from the other side now and then. Each site writes in its own style.
"""

from __future__ import annotations

import csv
import datetime
from dataclasses import dataclass
from pathlib import Path

import numpy as np

STYLES = ("sections", "prose", "terse")
NOTE_COLUMNS = ("note_id", "path", "patient", "label")

_SYMPTOMS = ("productive cough", "fever", "pleuritic chest pain", "shortness of breath", "rigors")
_SIGNS = ("crackles at the {side} base", "bronchial breathing on the {side}", "reduced air entry on the {side}")
_NEUTRAL_REASONS = (
    "fatigue", "a routine review", "follow-up of blood pressure", "a medication review", "a mild headache",
)  # fmt: skip
_PLANS = (
    "Review in two weeks.", "Safety-netting advice given.", "Continue current medications.",
    "Bloods requested.", "Patient agrees with the plan.",
)  # fmt: skip
_HEADINGS = {  # per style: history, examination, imaging, impression, plan
    "sections": ("HISTORY: ", "EXAMINATION: ", "CHEST X-RAY: ", "IMPRESSION: ", "PLAN: "),
    "terse": ("Hx – ", "O/E – ", "CXR – ", "Imp – ", "Plan – "),
}


@dataclass(frozen=True)
class Note:
    """One note of one patient."""

    note_id: str
    patient_id: str
    label: int
    text: str

    @property
    def path(self) -> str:
        """Path relative to the site's notes/ folder."""
        return f"{self.patient_id}.txt"


def site_style(site_index: int) -> str:
    """The writing style of site `site_index` (1-based)."""
    return STYLES[(site_index - 1) % len(STYLES)]


def make_notes(rng: np.random.Generator, patients, style: str, index_date: datetime.date, skip=()) -> list[Note]:
    """One note per patient, except those whose PatientID is in `skip`."""
    return [
        Note(f"{p.patient_id}-note", p.patient_id, p.label, _note_text(rng, p, style, index_date))
        for p in patients
        if p.patient_id not in skip
    ]


def write_notes(notes_dir: Path, notes: list[Note]) -> None:
    """Write `notes_dir/<PatientID>.txt` (UTF-8) and `notes_dir/labels.csv`."""
    notes_dir.mkdir(parents=True, exist_ok=True)
    for note in notes:
        (notes_dir / note.path).write_bytes(note.text.encode("utf-8"))
    with (notes_dir / "labels.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(NOTE_COLUMNS)
        writer.writerows((n.note_id, n.path, n.patient_id, n.label) for n in notes)


def _note_text(rng: np.random.Generator, patient, style: str, index_date: datetime.date) -> str:
    label = patient.label
    parts = (
        _history(rng, label, _age(patient.birth_date, index_date), patient.sex),
        _examination(rng, label),
        _imaging(rng, label),
        _impression(rng, label),
        _plan(rng, label),
    )
    return _render(style, parts)


def _age(birth_date: str, index_date: datetime.date) -> int:
    """Age in whole years at `index_date` of a DICOM-style YYYYMMDD birth date."""
    born = datetime.datetime.strptime(birth_date, "%Y%m%d").date()
    return index_date.year - born.year - ((index_date.month, index_date.day) < (born.month, born.day))


def _pick(rng: np.random.Generator, options) -> str:
    return str(options[rng.integers(len(options))])


def _join(phrases: list[str]) -> str:
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def _history(rng: np.random.Generator, label: int, age: int, sex: str) -> str:
    person = f"{age}-year-old {'woman' if sex == 'F' else 'man'}"
    symptoms = [s for s in _SYMPTOMS if rng.random() < (0.45 if label else 0.1)]
    reason = f"presenting with {_join(symptoms)}" if symptoms else f"seen for {_pick(rng, _NEUTRAL_REASONS)}"
    text = f"{person} {reason}."
    if not symptoms and rng.random() < (0.3 if label else 0.6):
        text += " Denies fever and cough."
    return text


def _examination(rng: np.random.Generator, label: int) -> str:
    temperature = rng.normal(38.2, 0.6) if label else rng.normal(36.9, 0.4)
    pulse = rng.normal(98, 12) if label else rng.normal(78, 10)
    saturation = min(100.0, rng.normal(93, 2.5) if label else rng.normal(97, 1.5))
    text = f"Temperature {temperature:.1f} °C, pulse {pulse:.0f}/min, SpO2 {saturation:.0f}% on air."
    side = _pick(rng, ("left", "right"))
    signs = [s.format(side=side) for s in _SIGNS if rng.random() < (0.4 if label else 0.06)]
    if signs:
        return f"{text} {_join(signs).capitalize()}."
    return f"{text} Chest clear to auscultation." if rng.random() < (0.5 if label else 0.7) else text


def _imaging(rng: np.random.Generator, label: int) -> str | None:
    draw, side = rng.random(), _pick(rng, ("left", "right"))
    if label:
        if draw < 0.55:
            return f"consolidation in the {side} lower zone."
        if draw < 0.72:
            return "no acute findings." if draw < 0.65 else "clear lung fields."
        return None
    if draw < 0.5:
        return _pick(rng, ("clear lung fields.", "no acute findings.", "clear lung fields, no acute findings."))
    if draw < 0.55:
        return "possible consolidation, likely atelectasis."
    return f"consolidation in the {side} lower zone." if draw < 0.6 else None


def _impression(rng: np.random.Generator, label: int) -> str:
    draw = rng.random()
    if label:
        if draw < 0.45:
            return "community-acquired pneumonia."
        return "lower respiratory tract infection." if draw < 0.7 else "viral illness."
    if draw < 0.08:
        return "possible early pneumonia."
    if draw < 0.3:
        return "viral illness."
    return _pick(rng, ("no acute illness.", "stable chronic conditions.", "musculoskeletal chest wall pain."))


def _plan(rng: np.random.Generator, label: int) -> str:
    chosen = [_PLANS[i] for i in sorted(rng.choice(len(_PLANS), size=2, replace=False))]
    if rng.random() < (0.4 if label else 0.05):
        chosen.insert(0, "Started on amoxicillin.")
    return " ".join(chosen)


def _render(style: str, parts: tuple) -> str:
    """Lay out (history, examination, imaging, impression, plan) in the site's style."""
    history, examination, imaging, impression, plan = parts
    if style == "prose":
        chest = f" Chest radiograph: {imaging}" if imaging else ""
        return f"Seen today. {history} On examination: {examination}{chest} Impression: {impression} {plan}\n"
    lines = zip(_HEADINGS[style], (history, examination, imaging, impression.capitalize(), plan))
    return "".join(f"{heading}{text}\n" for heading, text in lines if text)
