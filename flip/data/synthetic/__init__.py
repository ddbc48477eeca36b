"""flip's synthetic multi-site data set: real DICOM files, a FHIR R4B export and notes per site,
with one latent label behind all of them (`dataset` writes it; `fhir` and `notes` are its parts)."""
