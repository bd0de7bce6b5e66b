"""Turn a stream of token bytes into text that is safe to send.

Two things are held back until they are settled: the bytes of a UTF-8
character split across tokens, and text that may be the start of a stop
string. Every engine that produces raw token pieces uses this.
"""
from __future__ import annotations

import codecs
from typing import Optional, Sequence


class StopMatcher:
    """Finds stop strings across chunk boundaries; never lets one be emitted."""

    def __init__(self, stops: Sequence[str]):
        self.stops = [s for s in stops if s]
        self._pending = ""
        self.matched: Optional[str] = None  # the stop string that was reached

    def feed(self, text: str) -> tuple[str, bool]:
        """Returns (text to emit now, whether a stop string was reached)."""
        if not self.stops:
            return text, False
        buf = self._pending + text
        hits = [(at, stop) for at, stop in ((buf.find(s), s) for s in self.stops) if at >= 0]
        if hits:
            self._pending = ""
            at, self.matched = min(hits)
            return buf[:at], True
        keep = self._longest_stop_prefix_suffix(buf)
        self._pending = buf[len(buf) - keep:] if keep else ""
        return buf[: len(buf) - keep], False

    def flush(self) -> str:
        text, self._pending = self._pending, ""
        return text

    def _longest_stop_prefix_suffix(self, buf: str) -> int:
        best = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(buf)), best, -1):
                if stop.startswith(buf[-n:]):
                    best = n
                    break
        return best


class IncrementalText:
    """Bytes in, settled text out: UTF-8 completion plus stop strings."""

    def __init__(self, stops: Sequence[str] = ()):
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stops = StopMatcher(stops)
        self.stopped = False

    @property
    def matched(self) -> Optional[str]:
        """The stop string that ended the text, if one did."""
        return self._stops.matched

    def feed(self, piece: bytes) -> str:
        text, self.stopped = self._stops.feed(self._decoder.decode(piece, final=False))
        return text

    def finish(self) -> str:
        """Text still held back, at the end of generation (not after a stop)."""
        if self.stopped:
            return ""
        text, self.stopped = self._stops.feed(self._decoder.decode(b"", final=True))
        return text if self.stopped else text + self._stops.flush()
