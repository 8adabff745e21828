"""User-facing errors: the CLI prints these as one line (no traceback) and exits with status 2."""


class UserError(Exception):
    """Bad input from the user. The message names the problem and the fix, on one line."""
