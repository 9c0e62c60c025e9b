"""Progress bars that suit where the output goes: a live tqdm bar on a terminal; in a log (CI,
`nohup`, `> file`) one plain line per tenth of the work instead of a carriage-return update per step.
`DDPMKIT_PROGRESS=bar|lines` forces one or the other."""

from __future__ import annotations

import os
import sys

from tqdm.auto import tqdm

LOG_EVERY = 0.1  # in a log: one line per this fraction of the total


def interactive() -> bool:
    forced = os.environ.get("DDPMKIT_PROGRESS", "").lower()
    if forced in ("bar", "lines"):
        return forced == "bar"
    return sys.stderr.isatty()


class LogLines(tqdm):
    """tqdm that writes whole lines, at 0%, every LOG_EVERY of the total, and at the end."""

    def __init__(self, *args, **kwargs):
        self._next, self._last = 0.0, -1
        kwargs.update(mininterval=0, dynamic_ncols=False, ncols=100, ascii=True)
        super().__init__(*args, **kwargs)
        self.fp = _Lines(self.fp)

    def display(self, msg=None, pos=None):
        total = self.total or 0
        done = total and self.n >= total
        if self.n == self._last or (self.n < self._next and not done and self._last >= 0):
            return True
        self._last = self.n
        if total:
            self._next = (int(self.n / (LOG_EVERY * total)) + 1) * LOG_EVERY * total
        else:  # unknown total: every 10x more
            self._next = max(10, 10 * self.n)
        self.fp.write(self.__str__().strip() + "\n")
        self.fp.flush()
        return True

    def clear(self, nolock=False):  # no carriage returns in a log
        pass


class _Lines:
    """A stream that passes whole lines and drops tqdm's bare newlines and carriage returns."""

    def __init__(self, fp):
        self._fp = fp

    def write(self, s: str) -> None:
        if s.strip():
            self._fp.write(s)

    def flush(self) -> None:
        self._fp.flush()


def bar(iterable=None, **kwargs) -> tqdm:
    """`tqdm(iterable, **kwargs)` on a terminal, `LogLines` otherwise (transient `leave=False`
    bars are left out of logs)."""
    kwargs.setdefault("dynamic_ncols", True)
    if kwargs.get("disable") or interactive():
        return tqdm(iterable, **kwargs)
    if kwargs.pop("leave", True) is False:  # an inner, transient bar: not worth a log line
        return tqdm(iterable, **{**kwargs, "disable": True})
    return LogLines(iterable, **kwargs)
