"""Clinical text: TextDataModule on real files of every format, hashed n-grams, TextClassifier."""

from __future__ import annotations

import base64
import csv
import gzip
import hashlib
import inspect
import json
import os
import random
import subprocess
import sys
from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.documentreference import DocumentReference
from fhir.resources.R4B.patient import Patient
from hydra.utils import instantiate
from omegaconf import OmegaConf

from flip.data.text.schema import SCHEMAS as TEXT_SCHEMAS, TextDataConfig, text_problems
from flip.experiment.rules import text_model_problems
from flip.models.schema import TextClassifierConfig
from flip.data.text.datamodule import TextDataModule
from flip.data.text.tokenize import PAD, HashedNgrams, bucket, ngrams, words
from flip.models.text import TextClassifier
from flip.paths import CONF_DIR

POSITIVE = ["erythematous plaques with silvery scale", "psoriatic arthritis suspected", "nail pitting noted"]
NEGATIVE = ["skin clear on examination", "no rash or lesions", "routine follow up unremarkable"]
FILLER = "patient seen in clinic today vitals stable reviewed history medications allergies plan discussed".split()


def synthetic_note(rng: random.Random, label: int) -> str:
    """A clinical-style note whose wording carries the label."""
    filler = " ".join(rng.choices(FILLER, k=rng.randint(8, 30)))
    phrase = rng.choice(POSITIVE if label else NEGATIVE)
    return f"Clinic note. {filler.capitalize()}. Findings: {phrase}. {' '.join(rng.choices(FILLER, k=5))}."


def write_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def write_notes_site(site: Path, num_patients: int, seed: int = 0, notes_per_patient: int = 1) -> Path:
    """The generator's layout: notes/<id>.txt and notes/labels.csv (note_id, path, patient, label)."""
    rng = random.Random(seed)
    rows = []
    for p in range(num_patients):
        label = p % 2
        for n in range(notes_per_patient):
            note_id = f"P{p:04d}" + (f"-{n}" if notes_per_patient > 1 else "")
            (site / "notes").mkdir(parents=True, exist_ok=True)
            (site / "notes" / f"{note_id}.txt").write_text(synthetic_note(rng, label), encoding="utf-8")
            rows.append({"note_id": note_id, "path": f"{note_id}.txt", "patient": f"P{p:04d}", "label": label})
    write_csv(site / "notes" / "labels.csv", rows)
    return site


def skipped(dm: TextDataModule) -> dict[str, str]:
    return dict(dm.skipped)


# ---------------------------------------------------------------- tokenizer


def test_words_and_ngrams_in_text_order():
    tokens = words("No Rash, mild-itch.")
    assert tokens == ["no", "rash", "mild", "itch"]
    assert list(ngrams(tokens[:3], (1, 2))) == ["no", "no rash", "rash", "rash mild", "mild"]


def test_hashed_ids_pad_truncate_and_stay_in_range():
    tokenizer = HashedNgrams(num_buckets=64, ngram_range=(1, 2), max_tokens=8)
    short = tokenizer.encode("no rash")
    assert short.shape == (8,) and short.dtype == torch.int64
    assert short[:3].ne(PAD).all() and short[3:].eq(PAD).all()
    long = tokenizer.encode(" ".join(f"w{i}" for i in range(100)))
    assert long.ne(PAD).all() and int(long.max()) < 64
    assert tokenizer.ids("No RASH") == tokenizer.ids("no rash")


def test_tokenizer_is_stable_across_processes():
    text = "Erythematous plaques with silvery scale; no joint pain."
    code = (
        "from flip.data.text.tokenize import HashedNgrams; import json, sys; "
        "print(json.dumps(HashedNgrams(1 << 14).ids(sys.argv[1])))"
    )
    ids = []
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        result = subprocess.run([sys.executable, "-c", code, text], env=env, capture_output=True, text=True, check=True)
        ids.append(json.loads(result.stdout))
    assert ids[0] == ids[1] == HashedNgrams(1 << 14).ids(text)
    digest = hashlib.blake2b(b"psoriasis", digest_size=8).digest()
    assert bucket("psoriasis", 1 << 14) == 1 + int.from_bytes(digest, "little") % ((1 << 14) - 1)


def test_bad_tokenizer_settings_are_refused():
    with pytest.raises(ValueError, match="num_buckets"):
        HashedNgrams(num_buckets=8)
    with pytest.raises(ValueError, match="ngram_range"):
        HashedNgrams(ngram_range=(2, 1))


# ---------------------------------------------------------------- folder of .txt notes


@pytest.fixture
def folder_site(tmp_path) -> Path:
    """Labelled notes plus one of each kind of unusable note."""
    site = write_notes_site(tmp_path / "site-1", num_patients=12)
    notes = site / "notes"
    (notes / "bad.txt").write_bytes("rash".encode("utf-8") + b"\xff\xfe not utf-8")
    (notes / "empty.txt").write_text("  \n", encoding="utf-8")
    (notes / "unlabelled.txt").write_text("no label row for me", encoding="utf-8")
    (notes / "sub").mkdir()
    (notes / "sub" / "by-stem.txt").write_text("\ufeffnail pitting noted", encoding="utf-8")  # BOM dropped
    (notes / "badlabel.txt").write_text("a note with a broken label", encoding="utf-8")
    with (notes / "labels.csv").open("a", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerows([
            ["bad", "bad.txt", "X1", 1],
            ["empty", "empty.txt", "X2", 0],
            ["by-stem", "", "X3", 1],  # no path: matched by note_id = file stem
            ["badlabel", "badlabel.txt", "X4", "psoriasis"],
            ["gone", "gone.txt", "X5", 1],  # no such file
        ])
    return site


def test_folder_reads_notes_and_skips_each_unusable_one_with_reason(folder_site):
    dm = TextDataModule(root=folder_site.parent, site="site-1", num_buckets=1024, min_samples=5)
    dm.setup("fit")
    reasons = skipped(dm)
    assert reasons["bad.txt"].startswith("not valid UTF-8")
    assert reasons["empty.txt"] == "empty note"
    assert reasons["unlabelled.txt"] == "no label for this note"
    assert reasons["badlabel.txt"].startswith("label 'psoriasis' is not an integer (labels.csv:")
    assert reasons["gone.txt"].startswith("listed in labels.csv but no such note file")
    assert len(dm.skipped) == 5
    assert dm.num_items_found == 13 and sum(dm.split_sizes) == 13
    assert dm.label_counts == {0: 6, 1: 7}
    assert dm.site_name == "site-1" and len(dm.fingerprint) == 64


def test_folder_item_keys_hashes_and_patients(folder_site):
    dm = TextDataModule(root=folder_site, num_buckets=1024, max_tokens=16, min_samples=1)
    items = {item.key: item for item in dm.load_items(folder_site)}
    stem = items["by-stem"]
    data = (folder_site / "notes" / "sub" / "by-stem.txt").read_bytes()
    assert stem.content_sha256 == hashlib.sha256(data).hexdigest()
    assert (stem.patient, stem.label) == ("X3", 1)
    assert torch.equal(stem.inputs[0], HashedNgrams(1024, (1, 2), 16).encode("nail pitting noted"))
    assert items["P0003"].patient == "P0003"


def test_splits_keep_each_patient_in_one_split_and_are_deterministic(tmp_path):
    site = write_notes_site(tmp_path / "s", num_patients=30, notes_per_patient=3)
    first, second = (TextDataModule(root=site, num_buckets=1024, seed=7, min_samples=10) for _ in range(2))
    for dm in (first, second):
        dm.setup("fit")
    assert first.fingerprint == second.fingerprint and first.split_sizes == second.split_sizes == (54, 18, 18)
    for split in ("train", "val", "test"):
        for a, b in zip(first.datasets[split].tensors, second.datasets[split].tensors):
            assert torch.equal(a, b)
    inputs = {split: {tuple(row.tolist()) for row in first.datasets[split].tensors[0]} for split in ("train", "val", "test")}
    notes = {tuple(first.tokenizer.encode(p.read_text()).tolist()): p.stem.split("-")[0] for p in (site / "notes").glob("*.txt")}
    patients = {split: {notes[row] for row in rows} for split, rows in inputs.items()}
    assert sum(map(len, patients.values())) == len(set().union(*patients.values())) == 30


def test_too_few_usable_notes_fail_with_one_message(folder_site):
    dm = TextDataModule(root=folder_site, min_samples=50)
    with pytest.raises(ValueError, match=r"13 usable item\(s\).*min_samples=50 \(5 skipped\)"):
        dm.setup()


def test_without_labels_every_note_is_reported_unlabelled(tmp_path):
    site = write_notes_site(tmp_path, num_patients=3)
    dm = TextDataModule(min_samples=1, root=site, labels=None)
    assert dm.load_items(site) == [] and {r for _, r in dm.skipped} == {"no label for this note"}


# ---------------------------------------------------------------- JSONL and CSV


def test_jsonl_source_plain_and_gzipped(tmp_path):
    rng = random.Random(1)
    records = [{"id": f"n{i}", "body": synthetic_note(rng, i % 2), "y": i % 2, "pid": f"p{i}"} for i in range(10)]
    lines = [json.dumps(r) for r in records]
    lines += [
        json.dumps({"id": "blank", "body": "", "y": 1, "pid": "q"}),
        json.dumps({"id": "nolabel", "body": "some note", "pid": "q"}),
        json.dumps({"id": "surrogate", "body": "bad \ud800 text", "y": 0, "pid": "q"}),
        "{not json",
        '"just a string"',
    ]
    raw = ("\n".join(lines) + "\n").encode() + b'{"id": "latin", "body": "caf\xe9", "y": 1}\n'
    (tmp_path / "notes.jsonl").write_bytes(raw)
    (tmp_path / "notes.jsonl.gz").write_bytes(gzip.compress(raw))
    kwargs = dict(format="jsonl", id_column="id", text_column="body", label_column="y", patient_column="pid", num_buckets=512)
    plain = TextDataModule(min_samples=1, root=tmp_path, file="notes.jsonl", **kwargs)
    packed = TextDataModule(min_samples=1, root=tmp_path, file="notes.jsonl.gz", **kwargs)
    items = plain.load_items(tmp_path)
    assert [i.key for i in items] == [f"n{i}" for i in range(10)] and items[3].patient == "p3"
    assert [i.key for i in packed.load_items(tmp_path)] == [i.key for i in items]
    assert skipped(plain) == {
        "notes.jsonl:11": "empty note",
        "notes.jsonl:12": "no label for this note",
        "notes.jsonl:13": "not valid UTF-8",
        "notes.jsonl:14": "malformed JSON: Expecting property name enclosed in double quotes",
        "notes.jsonl:15": "not a JSON object",
        "notes.jsonl:16": "not valid UTF-8 (invalid continuation byte at byte 28)",
    }


def test_csv_source_with_multiline_text_and_bad_rows(tmp_path):
    rows = [{"text": "first line\nsecond line rash", "label": 1, "patient": "a"}, {"text": "clear skin", "label": 0, "patient": "b"}]
    write_csv(tmp_path / "notes.csv", rows)
    with (tmp_path / "notes.csv").open("ab") as handle:
        handle.write(b'"caf\xe9 au lait spots",1,c\r\n"no label here",,d\r\n"fine text",two,e\r\n')
    dm = TextDataModule(min_samples=1, root=tmp_path, format="csv", file="notes.csv", num_buckets=512)
    items = dm.load_items(tmp_path)
    assert [(i.key, i.label, i.patient) for i in items] == [("notes.csv:3", 1, "a"), ("notes.csv:4", 0, "b")]
    assert skipped(dm) == {
        "notes.csv:5": "not valid UTF-8",
        "notes.csv:6": "no label for this note",
        "notes.csv:7": "label 'two' is not an integer",
    }


# ---------------------------------------------------------------- FHIR attachments


def b64(text: bytes) -> str:
    return base64.b64encode(text).decode()


def document(id_: str, patient: str, attachments: list[dict], status: str = "current") -> DocumentReference:
    return DocumentReference(
        id=id_, status=status, subject={"reference": f"Patient/{patient}"}, content=[{"attachment": a} for a in attachments]
    )


def report(id_: str, patient: str, text: bytes) -> DiagnosticReport:
    return DiagnosticReport(
        id=id_,
        status="final",
        code={"text": "Dermatology report"},
        subject={"reference": f"Patient/{patient}"},
        presentedForm=[{"contentType": "text/plain; charset=utf-8", "data": b64(text)}],
    )


def ndjson(resources) -> bytes:
    return "".join(r.model_dump_json() + "\n" for r in resources).encode()


@pytest.fixture
def fhir_site(tmp_path) -> Path:
    rng = random.Random(2)
    texts = [synthetic_note(rng, i % 2).encode() for i in range(8)]
    docs = [document(f"d{i}", f"p{i}", [{"contentType": "text/plain", "data": b64(text)}]) for i, text in enumerate(texts)]
    docs += [
        document("mixed", "p0", [
            {"contentType": "application/pdf", "data": b64(b"%PDF-1.4")},
            {"contentType": "text/plain", "data": b64(b"nail pitting noted")},
        ]),
        document("linked", "p1", [{"contentType": "text/plain", "url": "https://example.org/note/1"}]),
        document("latin1", "p2", [{"contentType": "text/plain", "data": b64(b"caf\xe9")}]),
        document("declared", "p3", [{"contentType": "text/plain; charset=iso-8859-1", "data": b64("café rash".encode("latin-1"))}]),
        document("stranger", "nobody", [{"contentType": "text/plain", "data": b64(b"who am i")}]),
        document("retracted", "p4", [{"contentType": "text/plain", "data": b64(b"wrong chart")}], status="entered-in-error"),
    ]
    reports = [report(f"r{i}", f"p{i}", synthetic_note(rng, i % 2).encode()) for i in range(4)]
    fhir = tmp_path / "fhir"
    fhir.mkdir()
    (fhir / "DocumentReference.ndjson").write_bytes(ndjson(docs) + b"{broken DiagnosticReport\n")
    (fhir / "DiagnosticReport.ndjson.gz").write_bytes(gzip.compress(ndjson(reports)))
    (fhir / "Patient.ndjson").write_bytes(ndjson(Patient(id=f"p{i}") for i in range(8)))
    write_csv(tmp_path / "notes" / "labels.csv", [{"patient": f"p{i}", "label": i % 2} for i in range(8)])
    return tmp_path


def test_fhir_resources_round_trip(fhir_site):
    line = (fhir_site / "fhir" / "DocumentReference.ndjson").read_text().splitlines()[0]
    parsed = DocumentReference.model_validate_json(line)
    assert parsed.model_dump_json() == line and parsed.content[0].attachment.contentType == "text/plain"


def test_fhir_attachments_become_notes_and_bad_ones_are_skipped(fhir_site):
    dm = TextDataModule(min_samples=1, root=fhir_site, format="fhir", num_buckets=1024)
    items = {item.key: item for item in dm.load_items(fhir_site)}
    expected = {f"DocumentReference/d{i}" for i in range(8)} | {f"DiagnosticReport/r{i}" for i in range(4)}
    assert set(items) == expected | {"DocumentReference/mixed#1", "DocumentReference/declared"}
    assert (items["DiagnosticReport/r3"].patient, items["DiagnosticReport/r3"].label) == ("p3", 1)
    assert items["DocumentReference/declared"].inputs[0].tolist()[:3] == HashedNgrams(1024).ids("café rash")[:3]
    assert items["DocumentReference/mixed#1"].content_sha256 == hashlib.sha256(b"nail pitting noted").hexdigest()
    reasons = skipped(dm)
    assert reasons == {
        "DocumentReference.ndjson:9 DocumentReference/mixed attachment 0": "attachment is application/pdf, not text/plain",
        "DocumentReference.ndjson:10 DocumentReference/linked attachment 0": (
            "attachment has no inline data (url https://example.org/note/1)"
        ),
        "DocumentReference.ndjson:11 DocumentReference/latin1 attachment 0": "not valid UTF-8 (unexpected end of data at byte 3)",
        "DocumentReference.ndjson:13 DocumentReference/stranger attachment 0": "no label for this note",
        "DocumentReference.ndjson:14 DocumentReference/retracted": "status entered-in-error",
        "DocumentReference.ndjson:15": reasons["DocumentReference.ndjson:15"],
    }
    assert reasons["DocumentReference.ndjson:15"].startswith("malformed NDJSON line")


def test_fhir_version_is_checked_and_the_other_version_named(fhir_site):
    # R5 DocumentReference.context is a list of References; R4B's is a BackboneElement.
    r5 = json.loads((fhir_site / "fhir" / "DocumentReference.ndjson").read_text().splitlines()[0])
    r5.update(id="r5doc", context=[{"reference": "Encounter/e1"}])
    (fhir_site / "fhir" / "More.ndjson").write_text(json.dumps(r5) + "\n")
    dm = TextDataModule(min_samples=1, root=fhir_site, format="fhir", num_buckets=1024)
    dm.load_items(fhir_site)
    reason = skipped(dm)["More.ndjson:1"]
    assert reason.startswith("invalid R4B DocumentReference: context") and reason.endswith("(it looks like R5)")
    r5_only = TextDataModule(min_samples=1, root=fhir_site, format="fhir", fhir_version="R5", fhir_dir="fhir", num_buckets=1024)
    assert "DocumentReference/r5doc" in {item.key for item in r5_only.load_items(fhir_site)}


def test_truncated_gzip_keeps_what_was_read_and_says_where_it_broke(fhir_site):
    path = fhir_site / "fhir" / "DiagnosticReport.ndjson.gz"
    path.write_bytes(path.read_bytes()[:-12])
    dm = TextDataModule(min_samples=1, root=fhir_site, format="fhir", num_buckets=1024)
    keys = {item.key for item in dm.load_items(fhir_site)}
    assert "DocumentReference/d0" in keys
    assert skipped(dm)["DiagnosticReport.ndjson.gz"].startswith("unreadable after line")


# ---------------------------------------------------------------- config


def test_schema_yaml_and_constructor_agree(tmp_path):
    write_notes_site(tmp_path / "site-1", num_patients=12)
    yaml = OmegaConf.load(CONF_DIR / "data" / "text.yaml")
    yaml.pop("defaults")
    fields = set(TextDataConfig.__dataclass_fields__)
    assert set(yaml) <= fields and set(TEXT_SCHEMAS) == {"data/text"}
    assert fields - {"_target_"} <= set(inspect.signature(TextDataModule).parameters)
    cfg = OmegaConf.merge(OmegaConf.structured(TextDataConfig), yaml, {"root": str(tmp_path), "site": "site-1"})
    cfg = OmegaConf.merge({"seed": 3, "data": cfg}, {})
    dm = instantiate(cfg.data, _convert_="all")
    dm.setup("fit")
    assert dm.split_sizes == (8, 2, 2) and dm.seed == 3
    model_yaml = OmegaConf.load(CONF_DIR / "model" / "text_bow.yaml")
    model_yaml.pop("defaults")
    cfg.model = OmegaConf.merge(OmegaConf.structured(TextClassifierConfig), model_yaml)
    assert cfg.model.num_buckets == cfg.data.num_buckets and not text_model_problems(cfg)
    assert isinstance(instantiate(cfg.model, _convert_="all"), TextClassifier)


def test_text_problems_name_every_bad_key():
    good = OmegaConf.structured(TextDataConfig(root="/x", seed=0))
    assert text_problems(good) == []
    bad = OmegaConf.merge(good, {"format": "xml", "ngram_range": [3, 1], "num_buckets": 8, "max_tokens": 0, "fhir_version": "R3"})
    assert [p.split(":")[0] for p in text_problems(bad)] == [
        "data.format", "data.fhir_version", "data.num_buckets", "data.ngram_range", "data.max_tokens"
    ]
    assert text_problems(OmegaConf.merge(good, {"format": "jsonl"})) == [
        "data.file: format jsonl needs the file of notes (relative to the site folder)"
    ]
    mismatch = OmegaConf.create({"data": good, "model": {**TextClassifierConfig().__dict__, "num_buckets": 4096}})
    assert text_model_problems(mismatch) == ["model.num_buckets: must equal data.num_buckets (16384), got 4096"]
    assert text_problems({"_target_": "flip.data.dicom.datamodule.DicomDataModule"}) == []


# ---------------------------------------------------------------- the classifier


def trainer(**kwargs) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, **kwargs,
    )


def test_classifier_learns_a_separable_task(tmp_path):
    L.seed_everything(0, verbose=False)
    site = write_notes_site(tmp_path, num_patients=300, seed=5)
    dm = TextDataModule(min_samples=1, root=site, num_buckets=4096, max_tokens=96, batch_size=32, seed=0)
    model = TextClassifier(num_buckets=4096, embedding_dim=32, hidden=32, optimizer=partial(torch.optim.Adam, lr=0.01))
    trainer(max_epochs=4, deterministic=True).fit(model, datamodule=dm)
    metrics = trainer().test(model, datamodule=dm, verbose=False)[0]
    assert metrics["test/accuracy"] > 0.9 and metrics["test/auroc"] > 0.95


def test_fast_dev_run_and_bucket_mismatch(tmp_path):
    site = write_notes_site(tmp_path, num_patients=20)
    dm = TextDataModule(min_samples=1, root=site, num_buckets=256, batch_size=4)
    trainer(fast_dev_run=True).fit(TextClassifier(num_buckets=256, hidden=0), datamodule=dm)
    with pytest.raises(ValueError, match=r"model.num_buckets \(512\) must equal data.num_buckets \(256\)"):
        trainer(fast_dev_run=True).fit(TextClassifier(num_buckets=512), datamodule=dm)
