"""Helpers for tests, benchmarks and the selection demo, never used by the pipeline itself:
`synthetic_store` (a generated store with the shape of a real one, labelled synthetic) and
`selection_reference` (a pure-Python cross-check of the SQL selection rules)."""
