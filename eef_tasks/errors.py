"""Errors a user can act on. The CLI prints their message as one line (no traceback), exit 1."""


class UserError(Exception):
    """Something the user can fix; the message says what and how."""
