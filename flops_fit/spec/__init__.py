"""Stage 1, the spec: the pydantic model of a TOML spec (``spec.py``), its components and
launcher tables, pydantic errors turned into problems, and the generated JSON Schema."""
