"""Progress people can read: on a terminal a bar per vectorized call (seeds done, elapsed time, ETA), in a
log plain lines that carry the same elapsed time and ETA, and nothing with ``--quiet`` except warnings.

``Display(stream, quiet=False, bars=None)``: ``bars`` defaults to ``stream.isatty()``, so a redirected
stderr (a batch job's log, a pipe, a test's capture) never receives the bar's carriage returns. The bar is
tqdm's (``leave=True``: the finished bar stays as a one-line record); lines printed while a bar is open go
through ``tqdm.write`` so they do not tear it.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator, TextIO

__all__ = ["Display", "clock"]


def clock(seconds: float) -> str:
    """``"42 s"``, ``"3 min 05 s"`` or ``"2 h 07 min"``: a duration a person reads at a glance."""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _is_terminal(stream: TextIO | None) -> bool:
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError):   # closed or file-like without isatty
        return False


class Display:
    """Where progress goes: ``line`` (information, silenced by ``quiet``), ``warn`` (always shown) and
    ``bar`` (a context giving ``advance(seeds)``; a no-op unless ``bars``)."""

    def __init__(self, stream: TextIO | None, quiet: bool = False, bars: bool | None = None):
        self.warn_stream = stream
        self.stream = None if quiet else stream
        self.bars = bool(_is_terminal(self.stream) if bars is None else bars) and self.stream is not None
        self._open = None

    def _print(self, stream: TextIO | None, text: str) -> None:
        if stream is None:
            return
        if self._open is not None:
            self._open.write(text, file=stream)
        else:
            print(text, file=stream, flush=True)

    def line(self, text: str) -> None:
        self._print(self.stream, text)

    def warn(self, text: str) -> None:
        self._print(self.warn_stream, text)

    @contextlib.contextmanager
    def bar(self, total: int, desc: str) -> Iterator[Callable[[int], None]]:
        """``with display.bar(n_seeds, "[name] tag") as advance: ... advance(seeds_done_now)``."""
        if not self.bars or self._open is not None:
            yield lambda count: None
            return
        from tqdm import tqdm
        bar = tqdm(total=total, desc=desc, unit="seed", file=self.stream, leave=True, dynamic_ncols=True,
                   bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} seeds "
                              "[{elapsed} elapsed, ETA {remaining}, {rate_fmt}]")
        self._open = bar
        try:
            yield bar.update
        finally:
            self._open = None
            bar.close()
