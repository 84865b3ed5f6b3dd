"""The one exception type for mistakes a user can make (bad flag, missing file, unknown name).

The CLI prints its message on one line and exits with status 2; anything else is a bug
and keeps its traceback.
"""


class UsageError(ValueError):
    """Bad input from the user; the message names the problem and what is accepted."""
