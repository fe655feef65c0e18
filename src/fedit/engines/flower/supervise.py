"""Restart a child process when it exits: the warm node worker is a cache, never a single point of failure.

Used by the loopback launcher and by `fedit flower node` for the node worker. While the worker is down the
ClientApp trains in its own process (the cold path), so a restart only has to be eventually right, not immediate.
A worker that dies soon after starting is restarted after a pause that doubles each time (1 s ... 60 s), so a
crash loop (a broken model path, a full disk) costs little; one that had run a while is restarted at once.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable

HEALTHY_AFTER = 10.0  # seconds of running after which an exit is treated as a one-off (restart at once)


class Restarting:
    """One supervised child: `check()` restarts it if it has exited, respecting the back-off."""

    def __init__(self, name: str, spawn: Callable[[], subprocess.Popen], say: Callable[[str], None], *,
                 min_delay: float = 1.0, max_delay: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name, self._spawn, self._say, self._clock = name, spawn, say, clock
        self.min_delay, self.max_delay = min_delay, max_delay
        self.restarts = 0
        self.retired: list[subprocess.Popen] = []  # the exited processes, kept so they are reaped and stopped
        self._delay = 0.0
        self._due: float | None = None
        self.proc = spawn()
        self._started = clock()

    def check(self) -> subprocess.Popen:
        """The current process, restarted first if it has exited and its back-off has passed."""
        code = self.proc.poll()
        if code is None:
            return self.proc
        now = self._clock()
        if self._due is None:  # first seen dead: schedule the restart
            healthy = now - self._started >= HEALTHY_AFTER
            self._delay = 0.0 if healthy else min(self.max_delay, max(self.min_delay, 2 * self._delay))
            self._due = now + self._delay
            self._say(f"{self.name} exited with code {code}; restarting it"
                      + (f" in {self._delay:.0f}s" if self._delay else ""))
        if now < self._due:
            return self.proc
        self.retired.append(self.proc)
        self.proc = self._spawn()
        self._started, self._due = now, None
        self.restarts += 1
        self._say(f"{self.name} restarted (pid {self.proc.pid}, restart {self.restarts})")
        return self.proc
