"""The one exception type the command line turns into a one-line message."""


class PortError(Exception):
    """Bad input or an impossible request; the message names the problem and the file."""
