"""The one exception type for mistakes a user can make; `cli.py` turns it into one line and exit code 1."""


class UserError(Exception):
    """Bad input from the user (a file, a flag, a checkpoint). The message is one clear line."""
