"""Errors the user can fix. The CLI prints their message (which names the file, row or key, and what was expected)
and exits with status 2, without a traceback."""


class UserError(Exception):
    """Bad input: a config key or value, a missing file, a used run directory, an unknown reward."""
