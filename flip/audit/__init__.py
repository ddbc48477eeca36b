"""Audit records of a run: the manifest, and later verify / reproduce / diff."""
