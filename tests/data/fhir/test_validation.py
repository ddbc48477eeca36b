"""flip's FHIR validation decides as fhir.resources' own `model_validate_json` does, line by line.

Resources are written with fhir.resources models (R4B, and R5 for the wrong-version cases), then
broken in every way this file can think of: malformed JSON, wrong types and nulls at every depth,
unknown fields, wrong or missing resourceType, invalid codes, dates and numbers, choice types
given twice, R5-only fields. Every line goes through `parse_entry` (which reuses validated nested
elements) and is compared with plain `model_validate_json` and with `parse_entry_plainly` (whole
resources validated by fhir.resources): the same lines are accepted, into equal models, and the
rejected ones get the same reasons. (A line with a UTF-8 byte-order mark, or in UTF-16, which
model_validate_json rejects as bytes, flip has always read as json.loads decodes it; those lines
are compared with `parse_entry_plainly` only.)
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from fhir.resources import observation as r5_observation
from fhir.resources.R4B.annotation import Annotation
from fhir.resources.R4B.codeableconcept import CodeableConcept
from fhir.resources.R4B.coding import Coding
from fhir.resources.R4B.condition import Condition
from fhir.resources.R4B.extension import Extension
from fhir.resources.R4B.humanname import HumanName
from fhir.resources.R4B.identifier import Identifier
from fhir.resources.R4B.medicationrequest import MedicationRequest
from fhir.resources.R4B.meta import Meta
from fhir.resources.R4B.observation import Observation, ObservationComponent, ObservationReferenceRange
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.period import Period
from fhir.resources.R4B.procedure import Procedure
from fhir.resources.R4B.quantity import Quantity
from fhir.resources.R4B.reference import Reference
from pydantic import ValidationError

from flip.data.fhir.resources import ParseContext, accept_reusing, model_class, parse_entry, parse_entry_plainly

LOINC, SNOMED = "http://loinc.org", "http://snomed.info/sct"
OTHER_ENCODINGS = (b"\xef\xbb\xbf", b"\xff\xfe")  # a UTF-8 byte-order mark; UTF-16
CONTEXT = ParseContext("R4B", ("Condition", "MedicationRequest", "Observation", "Patient", "Procedure"))
_DELETE = object()  # a replacement that removes the value
# What a value is replaced with: each of JSON's types, nulls, and values FHIR types reject.
REPLACEMENTS = (None, 0, 2.5, True, "", "x", "2023-13-45", "not a code!", [], [None], {}, {"unknownField": 1}, [{}])


def concept(code: str, system: str = LOINC) -> CodeableConcept:
    return CodeableConcept(coding=[Coding(system=system, code=code, display=f"code {code}")], text=code)


def written() -> list:
    """Valid resources of every type flip reads, with nested elements, lists, choice types and extensions."""
    subject = Reference(reference="Patient/p1", display="P One")
    quantity = Quantity(value=4.25, unit="mg/L", system="http://unitsofmeasure.org", code="mg/L")
    patient = Patient(
        id="p1", meta=Meta(lastUpdated="2024-01-02T03:04:05Z", profile=["http://example.org/StructureDefinition/p"]),
        identifier=[Identifier(system="urn:oid:1.2.3", value="123")], name=[HumanName(family="One", given=["P", "Q"])],
        gender="female", birthDate="1970-01-01", deceasedBoolean=False, managingOrganization=Reference(display="hospital-1"),
        extension=[Extension(url="http://example.org/ext", valueString="x")],
        birthDate__ext={"extension": [{"url": "http://example.org/time", "valueDateTime": "1970-01-01T06:00:00Z"}]},
    )
    observation = Observation(
        id="o1", status="final", category=[concept("laboratory", "http://terminology.hl7.org/CodeSystem/observation-category")],
        code=concept("1988-5"), subject=subject, effectiveDateTime="2023-12-01T08:00:00+01:00", issued="2023-12-01T09:00:00Z",
        valueQuantity=quantity, interpretation=[concept("H", "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation")],
        referenceRange=[ObservationReferenceRange(low=Quantity(value=0, unit="mg/L"), high=Quantity(value=5, unit="mg/L"))],
        note=[Annotation(text="fasting")],
        component=[ObservationComponent(code=concept("8480-6"), valueQuantity=Quantity(value=120, unit="mm[Hg]"))],
    )
    return [
        patient,
        Patient(id="p2", gender="male", birthDate="1980"),
        observation,
        Observation(id="o2", status="amended", code=concept("6690-2"), subject=subject, effectivePeriod=Period(start="2023-01-01"),
                    valueQuantity=Quantity(value=7, unit="10*3/uL")),
        Condition(id="c1", subject=subject, code=concept("233604007", SNOMED), onsetDateTime="2023-06-01",
                  clinicalStatus=concept("active", "http://terminology.hl7.org/CodeSystem/condition-clinical"),
                  verificationStatus=concept("confirmed", "http://terminology.hl7.org/CodeSystem/condition-ver-status")),
        MedicationRequest(id="m1", status="active", intent="order", subject=subject, authoredOn="2023-02-01",
                          medicationCodeableConcept=concept("860975", "http://www.nlm.nih.gov/research/umls/rxnorm")),
        Procedure(id="x1", status="completed", subject=subject, code=concept("80146002", SNOMED), performedDateTime="2023-05-01"),
    ]


def paths(value, path=()) -> Iterator[tuple]:
    """Every place inside a JSON value: dict keys and list indices, at every depth."""
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        yield (*path, key)
        yield from paths(item, (*path, key))


def replaced(resource: dict, path: tuple, new) -> dict:
    copy = json.loads(json.dumps(resource))
    *parents, last = path
    holder = copy
    for key in parents:
        holder = holder[key]
    if new is _DELETE:
        del holder[last]
    else:
        holder[last] = new
    return copy


def broken(resource: dict) -> Iterator[dict]:
    """`resource` with each value replaced or deleted, and unknown fields added to each object."""
    for path in paths(resource):
        for new in (*REPLACEMENTS, _DELETE):
            yield replaced(resource, path, new)
    for path in [(), *paths(resource)]:
        holder = resource
        for key in path:
            holder = holder[key]
        if isinstance(holder, dict):
            yield replaced(resource, (*path, "unknownField"), "x") if path else {**resource, "unknownField": "x"}


def lines_of(resource: dict) -> Iterator[bytes]:
    """The resource's own line, and lines broken as text (not as JSON values)."""
    line = json.dumps(resource, separators=(",", ":"))
    yield line.encode()
    yield line[: len(line) // 2].encode()  # truncated
    yield (line + " x").encode()  # trailing garbage
    yield ("\ufeff" + line).encode()  # a byte-order mark
    yield line.replace('"status":"', '"status":"final","status":"', 1).encode()  # a key given twice
    yield line.replace("4.25", "NaN").replace('"1970-01-01"', '"\\ud800"').encode()  # NaN, a lone surrogate
    yield line.replace('"id":"', '"id":"\\u00e9\\t', 1).encode()  # an escaped non-ASCII id
    yield line.encode("utf-16")  # not UTF-8


def cases() -> Iterator[tuple[str, bytes]]:
    """(resource type the file name says, NDJSON line) of every variant."""
    for model in written():
        name, resource = model.get_resource_type(), json.loads(model.model_dump_json())
        yield from ((name, line) for line in lines_of(resource))
        yield from ((name, json.dumps(variant).encode()) for variant in broken(resource))
        for other in ("Observation", "Patient", "Encounter", "NoSuchType", "", None, 7):
            yield name, json.dumps({**resource, "resourceType": other}).encode()
        yield name, json.dumps({k: v for k, v in resource.items() if k != "resourceType"}).encode()
    for name, r5 in (("Observation", r5_observation.Observation(
            id="r5", status="final", code={"text": "x"}, subject={"reference": "Patient/p1"},
            instantiatesCanonical="http://example.org/PlanDefinition/x")),):
        yield name, r5.model_dump_json().encode()
    for text in ("", "[]", "[{}]", '"Observation"', "1", "null", "{}", '{"resourceType":"Observation"}', "{"):
        yield "Observation", text.encode()


def plain(name: str, line: bytes):
    """What fhir.resources makes of the line on its own: the model, or None when it rejects it."""
    try:
        return model_class("R4B", name).model_validate_json(line)
    except ValidationError:
        return None


def same(got, expected) -> bool:
    """The same outcome: equal models (also as JSON), or the same reason / None."""
    if isinstance(got, tuple) and isinstance(expected, tuple):
        models = got[1], expected[1]
        return got[0] == expected[0] and models[0] == models[1] and len({m.model_dump_json() for m in models}) == 1 \
            and models[0].model_fields_set == models[1].model_fields_set
    return got == expected


@pytest.fixture(scope="module")
def all_cases() -> list[tuple[str, bytes]]:
    found = list(dict.fromkeys(cases()))
    assert len(found) > 2000
    return found


def test_accepts_exactly_what_model_validate_json_accepts(all_cases):
    """Every UTF-8 line (the others: see the module docstring and the test below)."""
    rejected = 0
    for number, (name, line) in enumerate(all_cases):
        if line.startswith(OTHER_ENCODINGS):
            continue
        entry = (f"{name}.ndjson:{number}", line, name, None)
        got, expected = parse_entry(CONTEXT, entry), plain(name, line)
        if expected is None:
            rejected += 1
            assert not isinstance(got, tuple), (line, got)  # a reason, or None for a type the spec does not use
        else:
            assert same(got, (name, expected)), line
            assert same(accept_reusing(CONTEXT, entry), got), line  # accepted by reuse, not only by the plain path
    assert rejected > len(all_cases) // 2  # most variants are broken


def test_same_outcomes_and_reasons_as_whole_validation(all_cases):
    """NDJSON with and without a type in the file name, and Bundle entries (parsed dicts), as before."""
    for number, (name, line) in enumerate(all_cases):
        try:
            parsed = json.loads(line)
        except ValueError:
            parsed = None
        entries = [(f"f.ndjson:{number}", line, name, None), (f"f.ndjson:{number}", line, None, None)]
        entries += [(f"b.json#entry[{number}]", parsed, None, None)] if isinstance(parsed, dict) else []
        for entry in entries:
            assert same(parse_entry(CONTEXT, entry), parse_entry_plainly(CONTEXT, entry)), entry


def test_wrong_version_is_still_named():
    r5 = r5_observation.Observation(id="r5", status="final", code={"text": "x"}, instantiatesCanonical="http://example.org/x")
    entry = ("Observation.ndjson:1", r5.model_dump_json().encode(), "Observation", None)
    assert parse_entry(CONTEXT, entry) == "Observation at Observation.ndjson:1 is not valid R4B; it looks like R5"
    r4b = Condition(id="c", subject=Reference(reference="Patient/p"), code=concept("1", SNOMED)).model_dump_json().encode()
    r5_context = ParseContext("R5", CONTEXT.types)
    assert parse_entry(r5_context, ("Condition.ndjson:1", r4b, "Condition", None)) == (
        "Condition at Condition.ndjson:1 is not valid R5; it looks like R4B")
