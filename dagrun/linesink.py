"""The lines a worker or `dagrun run` writes to its stderr (the log) and stdout (the event
view) while a goal runs, written so that they never stop the engine.

A pipe nobody reads (`dagrun worker 2>&1 | less` left on its first page, a supervisor that
stopped draining, a harness that reads at the end) fills at 64 KiB; a plain write(2) then
blocks the engine's thread in the middle of a turn, and the worker does no work at all until
someone reads. The record is events.jsonl; these lines are a convenience view. So:

- stdout/stderr a pipe (FIFO): the lines go to a second open file description of that pipe,
  opened through /proc/self/fd/N with O_NONBLOCK. O_NONBLOCK is a property of the open file
  description: set on fd 2 itself it would be shared with the parent shell and any sibling
  writing to the same pipe, whose writes would then fail with EAGAIN. Our own description
  (close-on-exec: the agents inherit nothing; their stdout/stderr are the engine's capture
  pipes anyway) changes nothing for them.
- What does not fit now waits in a bounded buffer (BOUND bytes, or $DAGRUN_LOG_BUFFER); while
  something waits, the engine's poll(2) waits for POLLOUT on the pipe too (Engine._wait:
  waiting()) and pump()s it. Beyond the bound whole lines are dropped and counted; where the
  gap is, once there is room again, one line says how many: "dagrun: N log lines dropped
  (stderr not read); the events are in events.jsonl".
- Lines are written in chunks of at most PIPE_BUF bytes of whole lines: such a write to a pipe
  is all or nothing (pipe(7)), so the reader never sees half a line (a single line longer than
  PIPE_BUF may go out in pieces, never interleaved with another line of ours).
- At the end, finish() writes what waits, waiting at most EXIT_WAIT seconds in all for a reader;
  what is still left then is dropped: a worker never hangs on exit because nobody reads.

Anything else (a tty, a regular file, the journal's socket, a pipe when /proc is not there):
the lines go through sys.stderr / sys.stdout as before (a rich Live view redirects those), one
write per line, as cheap as before. No dagrun imports: this is the edge."""
from __future__ import annotations

import os
import select
import stat
import sys
import threading
import time
from collections import deque

BOUND = 1 << 20          # bytes waiting for a slow or absent reader; beyond: lines dropped
PIPE_BUF = 4096          # pipe(7): a write of at most this many bytes is atomic
EXIT_WAIT = 3.0          # s: finish() waits this long in all for a reader, then drops


class LineSink:
    """One of the process's standard streams (fd 1 or 2), written one whole line at a time."""

    def __init__(self, fd: int, bound: int | None = None):
        self.fd = fd
        self.name = "stdout" if fd == 1 else "stderr" if fd == 2 else f"fd {fd}"
        self.bound = buffer_bound() if bound is None else bound
        self.wfd: int | None = None            # our O_NONBLOCK description of the pipe
        self.pending: deque[bytes] = deque()  # whole lines, oldest first (the head: maybe a line's rest)
        self.size = 0
        self.dropped = 0                       # lines dropped since the last notice
        self.lock = threading.Lock()           # hooks and the watcher log from other threads
        self.gone = False                      # the pipe's reader closed it: nothing more to write
        try:
            stream = sys.stdout if fd == 1 else sys.stderr if fd == 2 else None
            ours = stream is None or stream.fileno() == fd          # (not a test's capture of it)
            if ours and stat.S_ISFIFO(os.fstat(fd).st_mode):
                self.wfd = os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except (OSError, ValueError, AttributeError):   # no /proc, a stream without a fd: as before
            self.wfd = None

    # ------------------------------------------------------------------ writing
    def line(self, text: str, must: bool = False) -> None:
        """Write text and a newline; never blocks on a pipe. must: kept even beyond the bound
        (`dagrun run`'s result lines: a few, the command's answer)."""
        if self.wfd is None:
            if self.gone:
                return
            stream = sys.stdout if self.fd == 1 else sys.stderr
            try:
                stream.write(text + "\n")
                stream.flush()
            except (OSError, ValueError):     # closed, EPIPE: nobody to tell
                pass
            return
        data = (text + "\n").encode("utf-8", "backslashreplace")
        with self.lock:
            if self.wfd is None:               # the reader went away meanwhile (another thread saw EPIPE)
                return
            if self.pending or self.dropped:
                self._keep(data, must)
                return
            try:
                n = os.write(self.wfd, data)
            except BlockingIOError:
                n = 0
            except OSError:                    # EPIPE: the reader is gone for good
                self._gone()
                return
            if n < len(data):
                self._keep(data[n:], must or n > 0)     # the rest of a line that went out in part: kept

    def _keep(self, data: bytes, must: bool = False) -> None:
        if self.wfd is None:
            return
        if self.dropped:
            note = self._note()
            if self.size + len(note) + len(data) > self.bound and not must:
                self.dropped += data.count(b"\n") or 1
                return
            self._push(note)
            self.dropped = 0
        if self.size + len(data) > self.bound and not must:
            self.dropped += data.count(b"\n") or 1
            return
        self._push(data)

    def _push(self, data: bytes) -> None:
        self.pending.append(data)
        self.size += len(data)
        _waiting.add(self)

    def _note(self) -> bytes:
        return (f"dagrun: {self.dropped} log lines dropped ({self.name} not read); "
                f"the events are in events.jsonl\n").encode()

    def pump(self) -> bool:
        """Write what waits, as far as the pipe takes it now. True: nothing waits any more."""
        with self.lock:
            while self.pending or self.dropped:
                if not self.pending:           # the reader caught up after a gap: say so
                    self._push(self._note())
                    self.dropped = 0
                chunk = self._chunk()
                try:
                    n = os.write(self.wfd, chunk)
                except BlockingIOError:
                    return False
                except OSError:
                    self._gone()
                    return True
                self._consumed(n)
            _waiting.discard(self)
            return True

    def _chunk(self) -> bytes:
        """Whole lines from the head, at most PIPE_BUF bytes (or the one head line if longer)."""
        p = self.pending
        if len(p) == 1 or len(p[0]) >= PIPE_BUF:
            return p[0]
        parts, size = [], 0
        for data in p:
            if size + len(data) > PIPE_BUF:
                break
            parts.append(data)
            size += len(data)
        return b"".join(parts)

    def _consumed(self, n: int) -> None:
        self.size -= n
        p = self.pending
        while n:
            head = p[0]
            if n >= len(head):
                p.popleft()
                n -= len(head)
            else:
                p[0] = head[n:]
                n = 0

    def _gone(self) -> None:
        """The reader closed the pipe: nothing will ever be read; write nothing more."""
        self.gone = True
        self.pending.clear()
        self.size = 0
        self.dropped = 0
        _waiting.discard(self)
        self.wfd_close()

    def wfd_close(self) -> None:
        if self.wfd is not None:
            try:
                os.close(self.wfd)
            except OSError:
                pass
            self.wfd = None

    def finish(self, deadline: float) -> None:
        """Write what waits, waiting for POLLOUT until the monotonic deadline; then drop it."""
        try:
            while self.wfd is not None and not self.pump():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                p = select.poll()
                p.register(self.wfd, select.POLLOUT)
                try:
                    p.poll(left * 1000.0)
                except InterruptedError:
                    pass
        except KeyboardInterrupt:              # Ctrl-C while we wait for a reader: stop waiting
            pass
        with self.lock:
            self.pending.clear()
            self.size = 0
            self.dropped = 0
            _waiting.discard(self)
            self.wfd_close()


_sinks: dict[int, LineSink] = {}
_waiting: set[LineSink] = set()


def sink(fd: int) -> LineSink:
    """The process's one LineSink of fd (1 or 2); the first call flushes the Python stream, so
    what was printed to it before comes first."""
    s = _sinks.get(fd)
    if s is None:
        try:
            (sys.stdout if fd == 1 else sys.stderr).flush()
        except (OSError, ValueError):
            pass
        s = _sinks[fd] = LineSink(fd)
    return s


def err(text: str, must: bool = False) -> None:
    """One line on stderr that never blocks the engine."""
    (_sinks.get(2) or sink(2)).line(text, must)


def out(text: str, must: bool = False) -> None:
    """One line on stdout that never blocks the engine."""
    (_sinks.get(1) or sink(1)).line(text, must)


def buffer_bound() -> int:
    """$DAGRUN_LOG_BUFFER (bytes) or BOUND."""
    try:
        return max(0, int(os.environ.get("DAGRUN_LOG_BUFFER") or BOUND))
    except ValueError:
        return BOUND


def waiting() -> set[LineSink]:
    """The sinks that have lines waiting for their reader (Engine._wait polls their wfd)."""
    return _waiting


def finish(wait: float = EXIT_WAIT) -> None:
    """At the end of the command: what waits is written if a reader takes it within `wait`
    seconds (in all), else dropped. The sinks are closed; a later line opens them again."""
    deadline = time.monotonic() + wait
    for fd in sorted(_sinks):
        _sinks.pop(fd).finish(deadline)
