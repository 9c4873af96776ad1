"""The learning loop inside the daemon: a thread that, every ``learn.check_every_s``,
runs a turn of the loop (teacher pass, then trigger) for each track whose ``[learn]``
(or ``[tracks.NAME.learn]``) is enabled. It has its own store connection and never
blocks the supervisor: a slow teacher delays only the next turn."""

from __future__ import annotations

import logging
import threading

from honed.store import StoreError

log = logging.getLogger("honed.learning")


def learning_tracks(workspace, store) -> list[str]:
    """The tracks whose learning loop is enabled."""
    return [t.name for t in store.list_tracks() if workspace.settings.learn_for(t.name).enabled]


def any_enabled(settings) -> bool:
    return settings.learn.enabled or any(t.learn is not None and t.learn.enabled for t in settings.tracks.values())


class LearningThread(threading.Thread):
    """Runs the loop until :meth:`stop`."""

    def __init__(self, workspace) -> None:
        super().__init__(name="honed-learning", daemon=True)
        self.ws = workspace
        self.stopping = threading.Event()
        self.turns = 0

    def run(self) -> None:
        from honed.learning.trigger import LearnError, tick

        store = self.ws.open_store()
        try:
            while not self.stopping.is_set():
                try:
                    for track in learning_tracks(self.ws, store):
                        if self.stopping.is_set():
                            break
                        try:
                            tick(self.ws, store, track)
                        except LearnError as exc:
                            log.error("learn: track %s: %s", track, exc)
                except StoreError as exc:
                    log.error("learn: store error, trying again later: %s", exc)
                except Exception:  # the loop must not take the daemon down with it
                    log.exception("learn: unexpected error; trying again later")
                self.turns += 1
                self.stopping.wait(min(self.interval(), 3600))
        finally:
            store.close()

    def interval(self) -> float:
        tracks = [self.ws.settings.learn] + [t.learn for t in self.ws.settings.tracks.values() if t.learn]
        return min(cfg.check_every_s for cfg in tracks if cfg.enabled) if any_enabled(self.ws.settings) else 60.0

    def stop(self, timeout: float = 10.0) -> None:
        self.stopping.set()
        self.join(timeout)
