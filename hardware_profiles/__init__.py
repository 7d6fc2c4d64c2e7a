"""Profilers that measure a machine into a YAML profile (``llmsim profile``), and the shipped
profiles in ``data/``. Depends on ``simulator`` (for the schema), never the other way round."""
