"""Rate-limit tests and the minute boundary.

casehub counts budgets with a sliding window counter: hits in the previous minute count in
proportion to how much of it the sliding window still covers. A test that spends a budget of a
few requests a minute and expects the exact remainder (or a 429 on the next) must not straddle
the boundary between two minutes, or its first hits count as slightly less than one each.
"""

from __future__ import annotations

import time


def clear_of_a_window_edge(window: int = 60, margin: float = 8.0) -> None:
    """Return at a moment at least `margin` seconds before the next `window` boundary: at once,
    or (about one time in eight, for a minute) after sleeping into the next window."""
    left = window - time.time() % window
    if left < margin:
        time.sleep(left + 0.05)
