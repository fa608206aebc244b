"""The one exception type the CLI turns into a clean message and an exit code."""


class UserError(Exception):
    """Bad input from the user: a path, an option, a file. The message says the fix.

    `exit_code` lets a command report distinct failures (e.g. the memory guard's stop).
    """

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code
