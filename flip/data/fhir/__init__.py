"""FHIR exports (Bulk Data NDJSON, Bundles) validated with fhir.resources, turned into one feature row per patient.

`schema` (the feature spec and its rules) imports nothing heavy; `datamodule` is the data module.
"""
