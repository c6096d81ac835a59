"""The one exception type the command line turns into a one-line message, and how a foreign
exception's text becomes part of such a line. A leaf: no project imports (``models`` uses it)."""


class PortError(Exception):
    """Bad input or an impossible request; the message names the problem and the file."""


class Terminated(BaseException):
    """SIGINT, SIGTERM or SIGHUP (Ctrl-C, ``timeout``, CI cancellation, ``docker stop``, a
    closed terminal), raised by a signal handler: unwinds past every handler of errors, so
    every staged output and unpacked archive is removed on the way. The command line then
    exits with 128 + the signal's number (not click's "Aborted!" and exit 1 for Ctrl-C);
    ``porting.loader.load`` lets the signal take its default course."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum

    @classmethod
    def handler(cls, signum: int, frame) -> None:
        """The signal handler that raises it (``signal.signal(SIGTERM, Terminated.handler)``)."""
        raise cls(signum)


def escaped(text: str) -> str:
    """``text`` fit for a one-line message: kept as it is when printable, else with its control
    characters (newlines, terminal escapes from a hostile file's names) escaped."""
    return text if text.isprintable() else ascii(text)[1:-1]


def first_line(err: Exception, *, escape: bool = False) -> str:
    """The first line of an exception's message (TensorFlow's run to many lines), its type's name
    when it has none; ``escape``: control characters escaped too (``escaped``), for messages that
    quote names from the file (h5py's)."""
    text = str(getattr(err, "message", None) or err).strip()
    line = text.splitlines()[0] if text else type(err).__name__
    return escaped(line) if escape else line
