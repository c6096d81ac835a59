"""The one exception type the command line turns into a one-line message."""


class PortError(Exception):
    """Bad input or an impossible request; the message names the problem and the file."""


def first_line(err: Exception) -> str:
    """The first line of an exception's message (TensorFlow's run to many lines)."""
    text = str(getattr(err, "message", None) or err).strip()
    return text.splitlines()[0] if text else type(err).__name__
