"""Clinical notes (files, JSONL/CSV, FHIR attachments) as hashed word n-grams: no vocabulary to share.

`schema` imports nothing heavy; `datamodule` is the data module, `tokenize` the tokeniser.
"""
