"""Config schemas, recipe discovery, composition and validation."""
