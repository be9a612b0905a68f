"""Durations as people read them: one home for the app's and the command line's wording of a time.

>>> clock(65), clock(3725), clock(None)
('1m05s', '1h02m', '–')
>>> rough(42), rough(600), rough(9000)
('42 s', '10 min', '2.5 h')
"""

from __future__ import annotations


def clock(seconds: float | None) -> str:
    """A time measured or left, to the second under an hour (``1m05s``), to the minute above (``1h02m``)."""
    if seconds is None:
        return "–"
    s = max(0, int(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def rough(seconds: float) -> str:
    """An estimate, as precise as an estimate is: seconds under 90 s, minutes under 90 min, then hours."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"
