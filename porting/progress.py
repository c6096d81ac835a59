"""Progress on long work (a download, a port), drawn by tqdm on stderr when it is a terminal.

Nothing is drawn where no one watches (a log, a pipe, CI): ``enabled`` None means "when the
stream is a terminal". tqdm is imported only when a bar is drawn; its own environment settings
apply (``TQDM_DISABLE=1`` turns every bar off). A message printed while a bar is drawn goes on
a line of its own (``end_line`` first)."""
from __future__ import annotations

import sys
from typing import TextIO


def is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError, OSError):  # no isatty, or closed
        return False


class Progress:
    """A bar for ``label``: bytes (``unit="B"``, scaled to KiB, MiB, ...) or steps."""

    def __init__(self, label: str, stream: TextIO | None = None, enabled: bool | None = None,
                 unit: str = "B"):
        self.label, self.unit = label, unit
        self.stream = stream or sys.stderr
        self.enabled = is_terminal(self.stream) if enabled is None else enabled
        self.bar = None

    def _bar(self, total: int | None):
        if self.bar is None:
            from tqdm import tqdm

            scaled = self.unit == "B"
            self.bar = tqdm(desc=self.label, total=total, file=self.stream, unit=self.unit,
                            unit_scale=scaled, unit_divisor=1024 if scaled else 1000,
                            leave=True, dynamic_ncols=True)
        elif total is not None and self.bar.total != total:
            self.bar.total = total
        return self.bar

    def update(self, done: int, total: int | None = None, final: bool = False) -> None:
        """``done`` of ``total`` (None: unknown) so far; ``final``: and that is all."""
        if not self.enabled:
            return
        bar = self._bar(total)
        bar.update(done - bar.n)
        if final:
            self.end_line()

    def step(self, what: str, total: int) -> None:
        """One more of ``total`` steps done, the next being ``what``."""
        if not self.enabled:
            return
        bar = self._bar(total)
        bar.set_postfix_str(what, refresh=False)
        bar.update(1)

    def end_line(self) -> None:
        """Close a drawn bar, so that what is printed next starts a line of its own."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
