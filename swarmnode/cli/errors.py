"""The CLI's user-facing error: printed as one line, exit status 2, no traceback."""


class CliError(Exception):
    """A mistake in the command line or its inputs that the user can fix."""
