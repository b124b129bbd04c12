"""Wake-ups. The only module that imports watchdog.

Watchdog events are only a doorbell: they say "look at goal g" (or "look for new goals");
the engine then reads what changed from the files. The watches are non-recursive, one per
goal folder plus one on goals/ -- the goal's events.jsonl is appended on every state change,
so a goal folder watch sees everything without a watch per task (10 000 tasks would exhaust
the default inotify watch limit).

When inotify cannot be used (NFS: other hosts' writes raise no inotify events; an exhausted
fs.inotify.max_user_watches / max_user_instances) the Watcher degrades to polling: the
engine wakes every `poll` seconds and compares the events files' sizes (a stat per goal).
"""
from __future__ import annotations

import os
import threading


class Doorbell:
    """A self-pipe: any thread rings it, the engine's select() wakes up."""

    def __init__(self):
        self.r, self.w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._lock = threading.Lock()
        self._dirty: set[str] = set()
        self._rescan = False

    def ring(self, goal: str | None = None) -> None:
        with self._lock:
            if goal is None:
                self._rescan = True
            else:
                self._dirty.add(goal)
        try:
            os.write(self.w, b"x")
        except BlockingIOError:
            pass  # the pipe is full of unread rings: one more changes nothing

    def take(self) -> tuple[set[str], bool]:
        try:
            while os.read(self.r, 4096):
                pass
        except BlockingIOError:
            pass
        with self._lock:
            dirty, self._dirty = self._dirty, set()
            rescan, self._rescan = self._rescan, False
        return dirty, rescan

    def close(self) -> None:
        for fd in (self.r, self.w):
            try:
                os.close(fd)
            except OSError:
                pass


class Watcher:
    """Non-recursive watchdog watches on goals/ and on each goal folder."""

    def __init__(self, goals_dir: str, bell: Doorbell, *, poll: float | None = None, log=None):
        self.goals_dir = goals_dir
        self.bell = bell
        self.log = log or (lambda msg: None)
        self.poll = poll            # None: inotify; a number: polling every `poll` seconds
        self.reason = "polling requested (--poll)" if poll else ""
        self._observer = None
        self._watches: dict[str, object] = {}
        if poll is None:
            try:
                self._start()
            except Exception as e:  # noqa: BLE001 - any failure of the backend means: poll
                self._degrade(e)

    @property
    def polling(self) -> bool:
        return self.poll is not None

    def _start(self) -> None:
        if os.environ.get("DAGRUN_NO_INOTIFY"):
            raise OSError("inotify disabled by DAGRUN_NO_INOTIFY")
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer

        goals_dir, bell = self.goals_dir, self.bell

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event):  # runs on watchdog's thread
                if event.event_type in ("opened", "closed_no_write"):
                    return
                src = event.src_path if isinstance(event.src_path, str) else event.src_path.decode()
                parent, name = os.path.split(src)
                if parent == goals_dir:
                    bell.ring(None)                 # a goal folder appeared/left
                else:
                    bell.ring(os.path.basename(parent))

        self._handler = Handler()
        obs = Observer()
        obs.daemon = True
        os.makedirs(goals_dir, exist_ok=True)
        obs.schedule(self._handler, goals_dir, recursive=False)
        obs.start()
        self._observer = obs

    def _degrade(self, err: Exception) -> None:
        self.poll = 1.0
        self.reason = f"inotify unavailable ({err}); polling every 1s"
        self.log(f"warning: {self.reason}")
        if self._observer is not None:
            try:
                self._observer.stop()
            except Exception:  # noqa: BLE001
                pass
            self._observer = None
        self._watches.clear()

    def watch_goal(self, goal: str) -> None:
        if self.polling or goal in self._watches:
            return
        try:
            self._watches[goal] = self._observer.schedule(self._handler, os.path.join(self.goals_dir, goal),
                                                          recursive=False)
        except Exception as e:  # noqa: BLE001 - ENOSPC (watch limit), EMFILE, a vanished folder
            if not os.path.isdir(os.path.join(self.goals_dir, goal)):
                return
            self._degrade(e)

    def unwatch_goal(self, goal: str) -> None:
        w = self._watches.pop(goal, None)
        if w is not None and self._observer is not None:
            try:
                self._observer.unschedule(w)
            except Exception:  # noqa: BLE001
                pass

    def healthy(self) -> bool:
        """False when the observer thread died (then the engine switches to polling)."""
        if self.polling:
            return True
        if self._observer is not None and not self._observer.is_alive():
            self._degrade(RuntimeError("watchdog observer stopped"))
            return False
        return True

    def close(self) -> None:
        if self._observer is not None:
            try:
                self._observer.stop()
                self._observer.join(timeout=1)
            except Exception:  # noqa: BLE001
                pass
            self._observer = None
