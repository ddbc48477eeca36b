"""A site's images, FHIR features and notes joined per patient, missing modalities masked or dropped.

`schema` imports nothing heavy; `datamodule` is the data module.
"""
