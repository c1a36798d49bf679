"""Configuration: the schema, loading and validation, the configs shipped with the package, and the known deviations from published recipes. Importable without torch."""
