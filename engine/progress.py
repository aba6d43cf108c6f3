"""Progress reporting and cancellation, independent of any UI.

A :class:`Monitor` wraps two optional callables: ``report(fraction, message)`` and ``is_cancelled()``.
Stages map their local 0..1 progress into a slice of the overall range.
"""
from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

from .errors import CancelledError

ReportFn = Callable[[float, str], None]
CancelFn = Callable[[], bool]


@dataclass
class Monitor:
    report_fn: ReportFn | None = None
    cancel_fn: CancelFn | None = None
    _lo: float = 0.0
    _hi: float = 1.0
    _messages: list[str] = field(default_factory=list)

    def check(self) -> None:
        """Raise :class:`CancelledError` if the user asked to stop."""
        if self.cancel_fn is not None and self.cancel_fn():
            raise CancelledError()

    def report(self, fraction: float, message: str = "") -> None:
        """Report local progress ``fraction`` (0..1) of the current stage; also checks for cancel."""
        f = self._lo + (self._hi - self._lo) * min(max(fraction, 0.0), 1.0)
        if self.report_fn is not None:
            self.report_fn(f, message)
        self.check()

    def finish(self, message: str = "done") -> None:
        """Report the end of the current stage without checking for cancel (the work is complete)."""
        if self.report_fn is not None:
            self.report_fn(self._hi, message)

    def log(self, message: str) -> None:
        self._messages.append(message)
        if self.report_fn is not None:
            self.report_fn(self._lo, message)

    @contextmanager
    def stage(self, lo: float, hi: float, message: str = ""):
        """Run a block as the slice ``[lo, hi]`` (in the parent's local units) of the overall progress."""
        old = (self._lo, self._hi)
        span = self._hi - self._lo
        self._lo, self._hi = self._lo + span * lo, self._lo + span * hi
        try:
            self.report(0.0, message)
            yield self
            self.report(1.0, message)
        finally:
            self._lo, self._hi = old

