"""flip's FHIR ingest (every resource validated) vs a plain loop of `model_validate_json` per line.

The export is written with fhir.resources R4B models: P patients, 10 Observations each (CRP and
WBC, gzipped NDJSON) and a pneumonia Condition for a third of them, >= 100k resources in all.
The plain loop reads each file line by line and validates every line with the model its file
name says. flip's side is `FhirDataModule.setup()` end to end (read, validate in worker
processes, extract, feature rows, splits): first with an empty parse cache (every resource
validated; nested elements that recur, such as codes and subject references, once per distinct
value, see `flip.data.fhir.validate_reusing`), then again with the cache the first pass wrote
(unchanged files are not validated again). Each side runs REPEATS times, alternating; the best time of each counts. Prints the rates,
`fhir_ingest_cached_ratio=` and, last, `fhir_ingest_ratio=<flip first-pass rate / plain rate>`.
Usage: python tests/benchmarks/fhir_ingest.py [PATIENTS] [REPEATS]
"""

from __future__ import annotations

import gzip
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.codeableconcept import CodeableConcept
from fhir.resources.R4B.coding import Coding
from fhir.resources.R4B.condition import Condition
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.quantity import Quantity
from fhir.resources.R4B.reference import Reference

from flip.data.fhir.datamodule import FhirDataModule

LOINC, SNOMED = "http://loinc.org", "http://snomed.info/sct"
TESTS = (("1988-5", "mg/L"), ("6690-2", "10*3/uL"))
FEATURES = {"observations": [
    {"name": "crp", "code": "1988-5", "unit": "mg/L", "aggregate": "latest", "window_days": 3650},
    {"name": "crp_mean", "code": "1988-5", "unit": "mg/L", "aggregate": "mean", "window_days": 3650},
    {"name": "wbc", "code": "6690-2", "unit": "10*3/uL", "aggregate": "max", "window_days": 3650},
]}
LABEL = {"resource": "Condition", "system": SNOMED, "codes": ["233604007"]}


def concept(system: str, code: str) -> CodeableConcept:
    return CodeableConcept(coding=[Coding(system=system, code=code)])


def write_export(folder: Path, patients: int) -> int:
    """Patient.ndjson, Observation.ndjson.gz, Condition.ndjson; returns the number of resources."""
    rng = random.Random(0)
    folder.mkdir(parents=True)
    people = [Patient(id=f"p{i}", gender=rng.choice(["female", "male"]), birthDate=f"{rng.randint(1930, 2005)}-0{rng.randint(1, 9)}-1{rng.randint(0, 9)}")
              for i in range(patients)]
    observations = [_observation(rng, f"o{i}", f"p{i // 10}", *TESTS[i % 2]) for i in range(patients * 10)]
    conditions = [Condition(id=f"c{i}", subject=Reference(reference=f"Patient/p{i}"), code=concept(SNOMED, "233604007"),
                            clinicalStatus=concept("http://terminology.hl7.org/CodeSystem/condition-clinical", "active"),
                            onsetDateTime="2023-06-01") for i in range(0, patients, 3)]
    for name, resources in (("Patient.ndjson", people), ("Observation.ndjson.gz", observations), ("Condition.ndjson", conditions)):
        data = "".join(r.model_dump_json() + "\n" for r in resources).encode()
        (folder / name).write_bytes(gzip.compress(data, 6) if name.endswith(".gz") else data)
    return len(people) + len(observations) + len(conditions)


def _observation(rng: random.Random, oid: str, pid: str, code: str, unit: str) -> Observation:
    when = f"20{rng.randint(15, 23)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:00:00Z"
    return Observation(id=oid, status="final", category=[concept("http://terminology.hl7.org/CodeSystem/observation-category", "laboratory")],
                       code=concept(LOINC, code), subject=Reference(reference=f"Patient/{pid}"), effectiveDateTime=when,
                       valueQuantity=Quantity(value=round(rng.uniform(0.5, 80), 1), unit=unit, system="http://unitsofmeasure.org", code=unit))


def plain_loop(folder: Path) -> tuple[int, float]:
    """Validate every line with the model its file name says; (resources, seconds)."""
    started, count = time.perf_counter(), 0
    for path in sorted(folder.iterdir()):
        model = get_fhir_model_class(path.name.split(".")[0])
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as lines:
            for line in lines:
                if line.strip():
                    model.model_validate_json(line)
                    count += 1
    return count, time.perf_counter() - started


def flip_ingest(root: Path, cache: Path) -> tuple[FhirDataModule, float]:
    started = time.perf_counter()
    dm = FhirDataModule(root=root, index_date="2024-01-01", features=FEATURES, label=LABEL, cache_dir=cache, min_samples=1)
    dm.setup("fit")
    return dm, time.perf_counter() - started


def main() -> None:
    patients = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    with tempfile.TemporaryDirectory() as tmp:
        root, cache = Path(tmp) / "site", Path(tmp) / "cache"
        started = time.perf_counter()
        total = write_export(root, patients)
        print(f"export: {total} resources ({patients} patients) written in {time.perf_counter() - started:.1f}s", flush=True)
        plain_s, first_s, cached_s = [], [], []
        for _ in range(repeats):
            count, seconds = plain_loop(root)
            assert count == total
            plain_s.append(seconds)
            shutil.rmtree(cache, ignore_errors=True)
            dm, seconds = flip_ingest(root, cache)
            assert sum(dm.resource_counts.values()) == total and not dm.skipped, dm.skipped[:3]
            first_s.append(seconds)
            cached_s.append(flip_ingest(root, cache)[1])
            print(f"plain {plain_s[-1]:.2f}s  flip first pass {first_s[-1]:.2f}s  flip cached {cached_s[-1]:.2f}s", flush=True)
    plain, first, cached = total / min(plain_s), total / min(first_s), total / min(cached_s)
    print(f"parse processes: {torch.get_num_threads()} (torch threads); items {dm.num_items_found}, splits {dm.split_sizes}")
    print(f"plain_rate={plain:.0f} resources/s")
    print(f"flip_first_pass_rate={first:.0f} resources/s")
    print(f"flip_cached_rate={cached:.0f} resources/s")
    print(f"fhir_ingest_cached_ratio={cached / plain:.2f}")
    print(f"fhir_ingest_ratio={first / plain:.2f}")


if __name__ == "__main__":
    main()
