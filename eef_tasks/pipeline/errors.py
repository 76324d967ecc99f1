"""The pipeline's error: a phase cannot run or did not finish."""

from eef_tasks.errors import UserError


class PipelineError(UserError):
    """A phase cannot run or did not finish; the message says why and what to do."""
