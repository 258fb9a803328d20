"""Progress of long steps (items, rate, ETA) for a terminal or for a run log, through tqdm.

`Progress` is what a step accepts: ``True`` draws a bar on the terminal, ``False`` stays silent, and a
callable (e.g. Dagster's ``context.log.info``) receives one plain line every `LOG_INTERVAL_S` seconds
and at the end, so a run log shows the same counts without being flooded by redraws.
"""

from __future__ import annotations

from collections.abc import Callable

from tqdm.auto import tqdm

Progress = bool | Callable[[str], None]
LOG_INTERVAL_S = 30.0


class _LineSink:
    """A file for tqdm that hands each finished line to a log function."""

    def __init__(self, log: Callable[[str], None]):
        self.log = log

    def write(self, text: str) -> None:
        line = text.strip("\r\n\x1b[A ")
        if line:
            self.log(line)

    def flush(self) -> None:
        pass


def progress_bar(progress: Progress, *, total: int, desc: str, unit: str) -> tqdm:
    if callable(progress):
        return tqdm(
            total=total,
            desc=desc,
            unit=unit,
            file=_LineSink(progress),
            mininterval=LOG_INTERVAL_S,
            ascii=True,
            ncols=100,
            disable=total == 0,
        )
    return tqdm(total=total, desc=desc, unit=unit, disable=not progress or total == 0, mininterval=2)
