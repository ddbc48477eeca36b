"""FhirDataModule on FHIR exports written with fhir.resources models (NDJSON, .gz, Bundles)."""

from __future__ import annotations

import datetime
import gzip
import json
import random
from pathlib import Path

import lightning as L
import pytest
import torch
from fhir.resources import condition as r5_condition
from fhir.resources import observation as r5_observation
from fhir.resources import patient as r5_patient
from fhir.resources.R4B.attachment import Attachment
from fhir.resources.R4B.bundle import Bundle, BundleEntry, BundleEntryRequest
from fhir.resources.R4B.codeableconcept import CodeableConcept
from fhir.resources.R4B.coding import Coding
from fhir.resources.R4B.condition import Condition
from fhir.resources.R4B.documentreference import DocumentReference, DocumentReferenceContent
from fhir.resources.R4B.medicationrequest import MedicationRequest
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.procedure import Procedure
from fhir.resources.R4B.quantity import Quantity
from fhir.resources.R4B.reference import Reference
from omegaconf import OmegaConf

from flip.experiment.recipes import resolve_recipe
from flip.experiment.validate import validate
from flip.data.fhir.schema import FhirDataConfig, fhir_problems
from flip.experiment.catalog import SCHEMAS
from flip.data.fhir.datamodule import FhirDataModule
from flip.data.fhir.export import CHUNK_SIZE
from flip.data.fhir.features import num_features
from flip.models.tabular import TabularClassifier
from flip.paths import CONF_DIR

LOINC, SNOMED, RXNORM = "http://loinc.org", "http://snomed.info/sct", "http://www.nlm.nih.gov/research/umls/rxnorm"
PNEUMONIA, DIABETES, METFORMIN, APPENDECTOMY = "233604007", "44054006", "860975", "80146002"
FEATURES = {
    "age": True,
    "gender": True,
    "observations": [
        {"name": "crp_latest", "code": "1988-5", "unit": "mg/L", "aggregate": "latest", "window_days": 365},
        {"name": "crp_mean", "code": "1988-5", "unit": "mg/L", "aggregate": "mean", "window_days": 365},
        {"name": "crp_min", "code": "1988-5", "unit": "mg/L", "aggregate": "min", "window_days": 365},
        {"name": "crp_max", "code": "1988-5", "unit": "mg/L", "aggregate": "max", "window_days": 365},
        {"name": "crp_count", "code": "1988-5", "unit": "mg/L", "aggregate": "count", "window_days": 365},
        {"name": "hba1c", "system": LOINC, "code": "4548-4", "unit": "%", "aggregate": "mean", "window_days": 730},
    ],
    "conditions": [{"name": "diabetes", "system": SNOMED, "codes": [DIABETES]}],
    "medications": [{"name": "metformin", "system": RXNORM, "codes": [METFORMIN]}],
    "procedures": [{"name": "appendectomy", "system": SNOMED, "codes": [APPENDECTOMY], "window_days": 365}],
}
LABEL = {"resource": "Condition", "system": SNOMED, "codes": [PNEUMONIA]}


# ---------------------------------------------------------------- fixtures written with models


def concept(system: str, code: str) -> CodeableConcept:
    return CodeableConcept(coding=[Coding(system=system, code=code)])


def subject(pid: str) -> Reference:
    return Reference(reference=pid if pid.startswith("urn:") else f"Patient/{pid}")


def observation(oid: str, pid: str, code: str, value: float, unit: str, when: str) -> Observation:
    quantity = Quantity(value=value, unit=unit, system="http://unitsofmeasure.org", code=unit)
    return Observation(id=oid, status="final", code=concept(LOINC, code), subject=subject(pid),
                       effectiveDateTime=when, valueQuantity=quantity)


def condition(cid: str, pid: str, code: str, onset: str | None = None) -> Condition:
    return Condition(id=cid, subject=subject(pid), code=concept(SNOMED, code), onsetDateTime=onset,
                     clinicalStatus=concept("http://terminology.hl7.org/CodeSystem/condition-clinical", "active"))


def medication(mid: str, pid: str, code: str, when: str) -> MedicationRequest:
    return MedicationRequest(id=mid, status="active", intent="order", subject=subject(pid),
                             medicationCodeableConcept=concept(RXNORM, code), authoredOn=when)


def procedure(pid_: str, pid: str, code: str, when: str) -> Procedure:
    return Procedure(id=pid_, status="completed", subject=subject(pid), code=concept(SNOMED, code), performedDateTime=when)


def write_ndjson(path: Path, resources: list, extra_lines: list[str] = ()) -> None:
    lines = [r.model_dump_json() for r in resources] + list(extra_lines)
    data = ("\n".join(lines) + "\n").encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def transaction(resources: list[tuple[str, object]]) -> Bundle:
    entries = [BundleEntry(fullUrl=url, resource=r, request=BundleEntryRequest(method="POST", url=r.get_resource_type()))
               for url, r in resources]
    return Bundle(type="transaction", entry=entries)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """Hand-checked patients p1..p3 (NDJSON, .gz) and p4 (a transaction Bundle with urn:uuid references)."""
    root = tmp_path_factory.mktemp("fhir-site")
    patients = [Patient(id="p1", gender="female", birthDate="1970-01-01"), Patient(id="p2", gender="male", birthDate="1980"),
                Patient(id="p3")]
    # Line 5: a value that makes fhir.resources raise AttributeError, not a ValidationError.
    crashing = {**json.loads(Patient(id="p5").model_dump_json()), "_birthDate": "1e400"}
    write_ndjson(root / "Patient.ndjson", patients, extra_lines=[patients[0].model_dump_json()[:25], json.dumps(crashing)])
    r5_only = r5_observation.Observation(id="r5", status="final", code={"text": "x"}, subject={"reference": "Patient/p1"},
                                         instantiatesCanonical="http://example.org/PlanDefinition/x")
    write_ndjson(root / "Observation.ndjson.gz", [
        observation("o1", "p1", "1988-5", 10, "mg/L", "2023-12-01T08:00:00Z"),
        observation("o2", "p1", "1988-5", 4, "mg/L", "2023-06-01"),
        observation("o3", "p1", "1988-5", 100, "mg/L", "2022-01-01"),  # before the window
        observation("o4", "p1", "1988-5", 50, "mg/L", "2024-02-01"),  # after index_date
        observation("o5", "p1", "1988-5", 1, "mg/dL", "2023-11-01"),  # wrong unit
        observation("o6", "p2", "1988-5", 2, "mg/L", "2023-10-01"),
        observation("o7", "p2", "4548-4", 6.0, "%", "2023-01-01"),
        observation("o8", "p2", "4548-4", 7.0, "%", "2023-07-01"),
        observation("o9", "nobody", "1988-5", 3, "mg/L", "2023-07-01"),
    ], extra_lines=[r5_only.model_dump_json()])
    write_ndjson(root / "Condition.ndjson", [condition("c1", "p1", DIABETES, "2020-03-01"), condition("c2", "p1", PNEUMONIA),
                                             condition("c3", "p3", DIABETES, "2025-01-01")])
    p4 = Patient(gender="other", birthDate="2000-06-15")
    bundle = transaction([("urn:uuid:4", p4), ("urn:uuid:5", condition(None, "urn:uuid:4", PNEUMONIA)),
                          ("urn:uuid:6", medication("m2", "urn:uuid:4", METFORMIN, "2023-03-01"))])
    (root / "bundle.json").write_text(bundle.model_dump_json())
    collection = Bundle(type="collection", entry=[BundleEntry(resource=medication("m1", "p1", METFORMIN, "2023-02-01")),
                                                  BundleEntry(resource=procedure("x1", "p1", APPENDECTOMY, "2023-05-01")),
                                                  BundleEntry(resource=procedure("x2", "p2", APPENDECTOMY, "2020-05-01"))])
    (root / "more.json").write_text(collection.model_dump_json())
    (root / "history.json").write_text(Bundle(type="history", entry=[]).model_dump_json())
    truncated = gzip.compress(condition("c9", "p2", PNEUMONIA).model_dump_json().encode())[:-12]
    (root / "Condition.2.ndjson.gz").write_bytes(truncated)
    note = Attachment(contentType="text/plain", data=b"bm90ZQ==")
    write_ndjson(root / "DocumentReference.ndjson", [DocumentReference(status="current", content=[DocumentReferenceContent(attachment=note)])])
    return root


def module(root: Path, tmp_path: Path | None = None, **kwargs) -> FhirDataModule:
    settings = dict(root=root, index_date="2024-01-01", features=FEATURES, label=LABEL, val_fraction=0.0,
                    test_fraction=0.0, standardize=False, cache_dir=tmp_path, cache=tmp_path is not None)
    dm = FhirDataModule(**{"min_samples": 1, **settings, **kwargs})
    dm.setup("fit")
    return dm


def rows(dm: FhirDataModule) -> dict[str, dict[str, float]]:
    """Feature values by patient id and column name (all items are in train in these tests)."""
    features, labels = dm.datasets["train"].tensors
    return {pid: {**dict(zip(dm.feature_names, row)), "label": label}
            for pid, row, label in zip(dm.item_keys, features.tolist(), labels.tolist(), strict=True)}


def reasons(dm: FhirDataModule) -> dict[str, str]:
    return dict(dm.skipped)


# ---------------------------------------------------------------- tests


def test_round_trip_of_written_resources(site):
    for line in gzip.decompress((site / "Observation.ndjson.gz").read_bytes()).splitlines()[:-1]:
        parsed = Observation.model_validate_json(line)
        assert Observation.model_validate_json(parsed.model_dump_json()) == parsed
    bundle = Bundle.model_validate_json((site / "bundle.json").read_bytes())
    assert [e.resource.get_resource_type() for e in bundle.entry] == ["Patient", "Condition", "MedicationRequest"]


def test_features_of_hand_checked_patients(site, tmp_path):
    dm = module(site, tmp_path)
    got = rows(dm)
    p1, p2, p3, p4 = got["p1"], got["p2"], got["p3"], got["urn:uuid:4"]
    assert p1["age"] == pytest.approx((datetime.date(2024, 1, 1) - datetime.date(1970, 1, 1)).days / 365.25)
    assert p2["age"] == pytest.approx(44.0, abs=1e-3)  # birthDate 1980 counts from 1980-01-01
    assert (p1["gender_female"], p2["gender_male"], p3["gender_unknown"], p4["gender_other"]) == (1, 1, 1, 1)
    # p1's CRP in the year up to 2024-01-01: 10 (Dec) and 4 (Jun); 100 (2022), 50 (2024) and mg/dL left out.
    assert (p1["crp_latest"], p1["crp_mean"], p1["crp_min"], p1["crp_max"], p1["crp_count"]) == (10, 7, 4, 10, 2)
    assert p2["hba1c"] == pytest.approx(6.5) and p2["hba1c_missing"] == 0
    assert (p1["diabetes"], p3["diabetes"], p1["metformin"], p4["metformin"]) == (1, 0, 1, 1)  # p3's diabetes is after index
    assert (p1["appendectomy"], p2["appendectomy"]) == (1, 0)  # p2's is outside the 365-day window
    assert {pid: r["label"] for pid, r in got.items()} == {"p1": 1, "p2": 0, "p3": 0, "urn:uuid:4": 1}
    assert dm.num_features == len(dm.feature_names) == num_features({"features": FEATURES, "missing": "mean"}) == 20


def test_unusable_records_are_reported_with_place_and_reason(site, tmp_path):
    skipped = reasons(module(site, tmp_path))
    assert skipped["Observation.ndjson.gz:5"] == "Observation with code 1988-5 has unit 'mg/dL', expected 'mg/L'"
    assert skipped["Patient.ndjson:4"].startswith("not valid JSON")
    assert skipped["Patient.ndjson:5"] == "Patient at Patient.ndjson:5 is not valid R4B: AttributeError: 'float' object has no attribute 'get'"
    assert skipped["Observation.ndjson.gz:10"] == "Observation at Observation.ndjson.gz:10 is not valid R4B; it looks like R5"
    assert "not a Patient in this export" in skipped["Observation.ndjson.gz:9"]
    assert skipped["history.json"] == "Bundle of type 'history' is not read (only collection, transaction, searchset)"
    assert skipped["Condition.2.ndjson.gz"].startswith("not a readable gzip file")
    assert not any(path.startswith("DocumentReference") for path in skipped)


def test_label_is_required_unless_inspecting(site, tmp_path):
    with pytest.raises(ValueError, match="needs `label`"):
        FhirDataModule(min_samples=1, root=site, index_date="2024-01-01", features=FEATURES)
    dm = FhirDataModule(min_samples=1, root=site, index_date="2024-01-01", features=FEATURES, require_labels=False, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="0 usable item"):
        dm.setup("fit")
    assert dm.unlabelled == 4


def test_unused_resource_types_are_not_read(site, tmp_path):
    dm = module(site, tmp_path)
    assert dm.unread == ["DocumentReference.ndjson"]
    assert dm.inventory()["resource_types"] == {"Condition": 4, "MedicationRequest": 2, "Observation": 9, "Patient": 4, "Procedure": 2}


def test_missing_policies(site, tmp_path):
    mean = rows(module(site, tmp_path, missing="mean"))
    assert mean["p3"]["crp_latest"] == pytest.approx(6.0) and mean["p3"]["crp_latest_missing"] == 1  # mean of 10 and 2
    assert mean["p1"]["hba1c"] == pytest.approx(6.5) and mean["p1"]["hba1c_missing"] == 1
    assert mean["p3"]["age_missing"] == 1 and mean["p3"]["crp_count"] == 0
    zero_dm = module(site, tmp_path, missing="zero")
    zero = rows(zero_dm)
    assert zero["p3"]["crp_latest"] == 0 and "crp_latest_missing" not in zero_dm.feature_names
    drop = module(site, tmp_path, missing="drop")
    assert drop.split_sizes == (1, 0, 0)  # only p2 has every value
    assert reasons(drop)["Patient.ndjson:3"] == "Patient/p3 has no age, crp_latest, crp_mean, crp_min, crp_max, hba1c (missing: drop)"


def test_declared_r5_reports_r4b_resources(tmp_path):
    site = tmp_path / "site"
    write_ndjson(site / "Patient.ndjson", [r5_patient.Patient(id=f"q{i}", gender="male") for i in range(3)])
    good = r5_condition.Condition(id="c0", subject={"reference": "Patient/q0"}, code={"coding": [{"system": SNOMED, "code": PNEUMONIA}]},
                                  clinicalStatus={"coding": [{"code": "active"}]})
    write_ndjson(site / "Condition.ndjson", [good, condition("c1", "q1", PNEUMONIA).model_copy(update={"clinicalStatus": None})])
    dm = module(site, fhir_version="R5", features={"age": False}, min_samples=3)
    assert reasons(dm) == {"Condition.ndjson:2": "Condition at Condition.ndjson:2 is not valid R5; it looks like R4B"}
    assert dm.label_counts == {0: 2, 1: 1}


def test_empty_site_fails_with_min_samples(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"0 usable item\(s\).*data.min_samples=10"):
        module(tmp_path / "empty", min_samples=10)


def test_missing_fhir_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="FHIR folder not found"):
        module(tmp_path, fhir_dir="fhir")


def test_bad_settings_are_reported_together():
    bad = {**FEATURES, "observations": [{"name": "crp", "code": "1988-5", "aggregate": "median", "window_days": 0}]}
    with pytest.raises(ValueError) as error:
        FhirDataModule(min_samples=1, root=".", index_date="2024-13-01", features=bad, label={"resource": "Encounter", "codes": []}, missing="impute")
    text = str(error.value)
    for expected in ("data.features.observations[0].aggregate: must be one of latest, mean, min, max, count, got 'median'",
                     "data.features.observations[0].window_days: must be a positive number of days, got 0",
                     "data.index_date: must be a date YYYY-MM-DD", "data.missing:", "data.label.resource:", "data.label.codes:"):
        assert expected in text


def test_by_site_from_a_column_is_refused_and_attribute_partitions(tmp_path):
    site = tmp_path / "pooled"
    patients = [Patient(id=f"a{i}", managingOrganization=Reference(display=f"hospital-{i % 2}")) for i in range(8)]
    write_ndjson(site / "Patient.ndjson", patients)
    write_ndjson(site / "Condition.ndjson", [condition(f"c{i}", f"a{i}", PNEUMONIA) for i in range(0, 8, 3)])
    column = {"kind": "by_site", "source": "column", "name": "x", "group": "hospital-0", "seed": 0}
    with pytest.raises(ValueError, match="no meaning for FHIR data"):
        module(site, partition=column)
    attribute = {**column, "source": "attribute", "name": "managingOrganization.display", "group": "hospital-1"}
    dm = module(site, tmp_path / "cache", partition=attribute, features={"age": False})
    assert dm.site_name == "hospital-1" and dm.split_sizes == (4, 0, 0)


def test_fingerprint_cache_and_processes_are_deterministic(tmp_path):
    site = tmp_path / "big"
    rng = random.Random(0)
    write_ndjson(site / "Patient.ndjson", [Patient(id=f"b{i}", gender=rng.choice(["male", "female"])) for i in range(40)])
    observations = [observation(f"o{i}", f"b{i % 40}", "1988-5", rng.uniform(0, 50), "mg/L", "2023-09-01") for i in range(CHUNK_SIZE + 5)]
    write_ndjson(site / "Observation.ndjson", observations)
    write_ndjson(site / "Condition.ndjson", [condition(f"c{i}", f"b{i}", PNEUMONIA) for i in range(0, 40, 3)])
    plain = module(site, parse_processes=1)
    cache = tmp_path / "cache"
    pooled = module(site, cache, parse_processes=2)
    cached = module(site, cache, parse_processes=2)
    assert len(list((cache / "fhir").glob("*.json"))) == 3
    assert plain.fingerprint == pooled.fingerprint == cached.fingerprint
    for other in (pooled, cached):
        assert torch.equal(plain.datasets["train"].tensors[0], other.datasets["train"].tensors[0])
    observations[0] = observation("o0", "b0", "1988-5", 99, "mg/L", "2023-09-01")
    write_ndjson(site / "Observation.ndjson", observations)
    assert module(site, cache, parse_processes=2).fingerprint != plain.fingerprint


def test_trains_with_the_tabular_model(tmp_path):
    site = tmp_path / "train"
    rng = random.Random(1)
    write_ndjson(site / "Patient.ndjson", [Patient(id=f"t{i}", gender=rng.choice(["male", "female"]), birthDate=f"{rng.randint(1940, 2000)}-01-01") for i in range(48)])
    sick = [i for i in range(48) if i % 2]
    write_ndjson(site / "Condition.ndjson", [condition(f"c{i}", f"t{i}", PNEUMONIA) for i in sick])
    write_ndjson(site / "Observation.ndjson", [observation(f"o{i}", f"t{i}", "1988-5", rng.uniform(20, 90) if i in sick else rng.uniform(0, 10), "mg/L", "2023-11-01") for i in range(48)])
    dm = FhirDataModule(min_samples=1, root=site, index_date="2024-01-01", features={"observations": FEATURES["observations"][:1]}, label=LABEL,
                        batch_size=8, seed=3, cache=False)
    dm.setup("fit")
    assert dm.split_sizes == (28, 10, 10)
    train_features = dm.datasets["train"].tensors[0][:, dm.feature_names.index("crp_latest")]
    assert train_features.mean().abs() < 1e-5  # standardised with the train split's statistics
    model = TabularClassifier(in_features=dm.num_features)
    trainer = L.Trainer(fast_dev_run=True, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=dm)
    features, labels = next(iter(dm.train_dataloader()))
    assert features.shape == (8, dm.num_features) and labels.dtype == torch.int64


def test_tabular_model_needs_its_width():
    with pytest.raises(ValueError, match="in_features"):
        TabularClassifier()


def test_yaml_option_matches_its_schema():
    option = OmegaConf.load(CONF_DIR / "data" / "fhir.yaml")
    assert option.pop("defaults") == ["/schema/data/fhir@_here_", "_self_"]
    cfg = OmegaConf.merge(OmegaConf.structured(FhirDataConfig), option)
    assert fhir_problems(cfg) == []
    assert num_features(cfg) == 2 + 4 + 4 + 3 + 3  # age (+missing), gender, 4 labs (+3 missing columns), 3 conditions
    model = OmegaConf.load(CONF_DIR / "model" / "tabular_mlp.yaml")
    model.pop("defaults")
    assert OmegaConf.merge(OmegaConf.structured(SCHEMAS["model/tabular_mlp"]), model).in_features is None


def test_yaml_spec_reads_the_synthetic_export(tmp_path):
    """The option's spec on flip's generated sites: every resource usable, both labels present."""
    option = OmegaConf.to_container(validate(resolve_recipe(None), ["data=fhir", "data.root=/x"]).data)
    spec = {key: option[key] for key in ("fhir_dir", "fhir_version", "index_date", "features", "label", "missing")}
    synthetic = {"num_sites": 2, "images_per_site": 24, "image_size": 16, "seed": 5}
    dm = FhirDataModule(root=None, site="site-2", synthetic=synthetic, cache_dir=tmp_path, min_samples=10, **spec)
    dm.setup("fit")
    assert dm.skipped == [] and dm.unread == ["fhir/DocumentReference.ndjson"]
    assert set(dm.label_counts) == {0, 1} and dm.num_features == num_features(option)
    features = dm.datasets["train"].tensors[0]
    assert torch.isfinite(features).all() and features[:, dm.feature_names.index("crp_missing")].max() <= 1


def test_schema_problems_name_the_key():
    cfg = OmegaConf.structured(FhirDataConfig(index_date="2024-01-01"))
    cfg.features.observations = [{"name": "crp", "code": "1988-5", "aggregate": "sum", "units": "mg/L"}]
    cfg.features.conditions = [{"name": "crp", "codes": ["1"]}]
    assert fhir_problems(cfg) == [
        "data.features.observations[0].units: unknown key (did you mean 'unit'?)",
        "data.features.observations[0].aggregate: must be one of latest, mean, min, max, count, got 'sum'",
        "data.features.conditions[0].name: column 'crp' is already used",
    ]
    assert json.dumps(fhir_problems({"fhir_version": "R4", "missing": "zero", "index_date": "2024-01-01"})) == "[]"
