"""The two error types every layer raises; the CLI turns them into one line and an exit status."""


class UserError(Exception):
    """A mistake in the user's input; the CLI prints its message and exits with status 2."""


class RunError(Exception):
    """A failure while running; the CLI prints its message and exits with status 1."""
