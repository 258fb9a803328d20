"""Hot swap: a new model + index pair is loaded on a thread and replaces the serving pair in one
assignment; a watcher swaps in the index folder's new build when the pipeline replaces it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from pathlib import Path

from fastapi.concurrency import run_in_threadpool

from imagesearch.index.store import index_fingerprint
from imagesearch.serving.service import SearchService
from imagesearch.settings import Settings

log = logging.getLogger(__name__)


def load_if_built(settings: Settings, folder: Path) -> SearchService | None:
    """The pair of an index folder, or None while nothing complete is there (a challenger index
    appears only after a training run)."""
    if index_fingerprint(folder) is None:
        return None
    return SearchService.from_index(settings, folder)


async def watch_index(swapper: Swapper, settings: Settings, folder: Path, every: float) -> None:
    """Swap in the index folder's new build (and the model its manifest names) when it changes.

    The pipeline rebuilds the index after a new champion is promoted; the folder is replaced whole, so
    a changed manifest digest means a complete new index. A build counts as served only once it is
    swapped in: a load that fails (a model not downloadable yet, a transient error) is tried again at
    the next poll, and no error stops the watcher.
    """
    serving = swapper.serving()
    served = serving.fingerprint if serving is not None else None
    while True:
        await asyncio.sleep(every)
        try:
            current = await run_in_threadpool(index_fingerprint, folder)
            if current is None or current == served:
                continue
            if swapper.start(lambda: SearchService.from_index(settings, folder)):
                await run_in_threadpool(swapper.wait)
                if swapper.last["status"] == "swapped":
                    served = current
                else:
                    log.warning("index %s not swapped in (%s); retrying", folder, swapper.last)
        except Exception:  # the watcher must outlive any one bad poll
            log.exception("index watcher: a poll of %s failed; still watching", folder)


class Swapper:
    """Loads a new model + index pair on a thread and swaps it into `state.<slot>` in one assignment
    (slot "service": the champion's pair; "challenger": the experiments' other pair)."""

    def __init__(self, state, slot: str = "service") -> None:
        self.state, self.slot = state, slot
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None
        self.last: dict = {"status": "idle"}

    def start(self, load: Callable[[], SearchService]) -> bool:
        with self.lock:
            if self.thread is not None and self.thread.is_alive():
                return False
            self.last = {"status": "loading"}
            self.thread = threading.Thread(target=self._run, args=(load,), name="index-swap", daemon=True)
            self.thread.start()
            return True

    def _run(self, load: Callable[[], SearchService]) -> None:
        try:
            fresh = load()
        except Exception as error:  # any failure to load must leave the serving pair untouched
            self.last = {"status": "failed", "error": f"{type(error).__name__}: {error}"}
            return
        previous = self.serving()
        setattr(self.state, self.slot, fresh)  # one assignment: a request sees the old pair or the new
        if previous is not None:
            previous.close()  # its queued queries still finish on it
        before = previous.model_version if previous is not None else None
        self.last = {"status": "swapped", "from": before, "to": fresh.model_version}

    def serving(self) -> SearchService | None:
        return getattr(self.state, self.slot, None)

    def wait(self, timeout: float | None = None) -> None:
        if self.thread is not None:
            self.thread.join(timeout)

    def status(self, serving: str) -> dict:
        return {**self.last, "serving": serving}
