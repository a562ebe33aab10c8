"""One computation at a time, the latest request wins.

A slider dragged across its range sends many values while the first computation is
still running. :class:`LatestRunner` runs jobs on one background thread; a job
submitted while another runs replaces whatever job was still waiting, so the backlog
is never longer than one and the last value is always the one computed. A running job
can poll :meth:`LatestRunner.superseded` to stop optional work (metrics, curves) as
soon as a newer request is waiting.

Running off the kernel's main thread is what keeps the kernel free to receive the
next slider message; ipykernel sends widget updates from any thread.

:meth:`LatestRunner.close` drops the waiting job, refuses new ones and waits for the
worker thread to end: a closed runner holds no job (nor what its closure references)
and no thread.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable

__all__ = ["LatestRunner"]


class LatestRunner:
    """Run submitted callables one at a time on a worker thread; the latest one wins.

    Parameters
    ----------
    on_error : callable, optional
        Called with the exception when a job raises (the runner keeps going).
    background : bool, default True
        False runs each job synchronously inside :meth:`submit` (scripts, debugging).
    """

    def __init__(self, on_error: Callable[[BaseException], None] | None = None,
                 background: bool = True) -> None:
        self._cond = threading.Condition()
        self._pending: Callable[[], None] | None = None
        self._running = False
        self._on_error = on_error
        self.background = background
        #: Jobs started so far.
        self.started = 0
        #: Jobs submitted so far (started + dropped as superseded + waiting).
        self.submitted = 0
        #: The last exception a job raised (None if none has).
        self.last_error: BaseException | None = None
        self._closed = False
        self._thread: threading.Thread | None = None

    def submit(self, job: Callable[[], None]) -> None:
        """Queue ``job``, replacing a job that is still waiting to start (dropped once closed)."""
        with self._cond:
            if self._closed:
                return
            self.submitted += 1
            if self._running:
                self._pending = job
                return
            # No job runs: this one starts now (a later submit cannot replace it any more).
            self._running = True
            self.started += 1
            if self.background:
                # Started under the lock, so that close() always finds the thread it has to join.
                self._thread = threading.Thread(target=self._loop, args=(job,), name="camwidgets-runner",
                                                daemon=True)
                self._thread.start()
                return
        self._loop(job)

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    def close(self, timeout: float | None = None) -> bool:
        """Drop the waiting job, refuse new ones and wait for the worker thread to end.

        A job already running is not interrupted (it can poll :meth:`superseded`, which is true
        from now on, or its own flag); returns False if it was still running after ``timeout``
        seconds (the thread then ends as soon as that job returns). Closing again, or from inside
        a job, is fine (inside a job nothing is waited for).
        """
        with self._cond:
            self._closed = True
            self._pending = None
            self._on_error = None
            thread = self._thread
            self._cond.notify_all()
        if thread is None or thread is threading.current_thread():
            return True
        thread.join(timeout)
        return not thread.is_alive()

    def superseded(self) -> bool:
        """True when a newer job is waiting, or the runner is closed: the running job should stop
        optional work."""
        with self._cond:
            return self._pending is not None or self._closed

    @property
    def busy(self) -> bool:
        """True while a job runs or waits."""
        with self._cond:
            return self._running or self._pending is not None

    def wait(self, timeout: float | None = None) -> bool:
        """Block until no job runs or waits; False if ``timeout`` (seconds) passed first."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._running and self._pending is None, timeout)

    def _loop(self, job: Callable[[], None]) -> None:
        while True:
            try:
                job()
            except BaseException as err:  # reported, and the runner stays usable
                self.last_error = err
                on_error = self._on_error  # None once closed
                if on_error is not None:
                    with contextlib.suppress(Exception):  # an error handler must never kill the worker
                        on_error(err)
            with self._cond:
                pending, self._pending = self._pending, None
                if pending is None:
                    self._running = False
                    self._cond.notify_all()
                    return
                job = pending
                self.started += 1
