"""The one exception type for mistakes a user can make; `cli.py` turns it into one line and exit code 1."""


class UserError(Exception):
    """Bad input from the user (a file, a flag, a checkpoint). The message is one clear line."""


# Threads running foreign code (Rust, C++) that a stop (Ctrl-C, SIGTERM) left behind: `nanogpt` ends without the
# interpreter's shutdown while one runs (cli.main), since that shutdown would abort the process inside them.
ABANDONED: list = []
