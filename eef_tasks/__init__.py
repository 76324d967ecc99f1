"""eef: Exploring Expert Failures (EEF) for LLM agent tuning, as plain functions that the Prefect
flows in `flows/` wrap. The store (`store`), selection (`selection`), chats (`chat`) and
import/export (`trajectory_io`) need no model and no environment."""

__version__ = "0.1.0"
