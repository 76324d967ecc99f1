"""Prefect flows: each file tells one phase of the EEF pipeline as a story over eef_tasks."""
