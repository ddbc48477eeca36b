"""DICOM Part-10 files: 2-D images and 3-D series, labels from a CSV or a header attribute, a decoded-pixel cache.

`schema` (the options' keys and rules) imports nothing heavy; `datamodule` is the data module.
"""
