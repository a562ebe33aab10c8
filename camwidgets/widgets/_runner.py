"""One computation at a time, the latest request wins.

A slider dragged across its range sends many values while the first computation is
still running. :class:`LatestRunner` runs jobs on one background thread; a job
submitted while another runs replaces whatever job was still waiting, so the backlog
is never longer than one and the last value is always the one computed. A running job
can poll :meth:`LatestRunner.superseded` to stop optional work (metrics, curves) as
soon as a newer request is waiting.

Running off the kernel's main thread is what keeps the kernel free to receive the
next slider message; ipykernel sends widget updates from any thread.
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

    def submit(self, job: Callable[[], None]) -> None:
        """Queue ``job``, replacing a job that is still waiting to start."""
        with self._cond:
            self.submitted += 1
            self._pending = job
            if self._running:
                return
            self._running = True
        if self.background:
            threading.Thread(target=self._loop, name="camwidgets-runner", daemon=True).start()
        else:
            self._loop()

    def superseded(self) -> bool:
        """True when a newer job is waiting: the running job should stop optional work."""
        with self._cond:
            return self._pending is not None

    @property
    def busy(self) -> bool:
        """True while a job runs or waits."""
        with self._cond:
            return self._running or self._pending is not None

    def wait(self, timeout: float | None = None) -> bool:
        """Block until no job runs or waits; False if ``timeout`` (seconds) passed first."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._running and self._pending is None, timeout)

    def _loop(self) -> None:
        while True:
            with self._cond:
                job, self._pending = self._pending, None
                if job is None:
                    self._running = False
                    self._cond.notify_all()
                    return
                self.started += 1
            try:
                job()
            except BaseException as err:  # reported, and the runner stays usable
                self.last_error = err
                if self._on_error is not None:
                    with contextlib.suppress(Exception):  # an error handler must never kill the worker
                        self._on_error(err)
