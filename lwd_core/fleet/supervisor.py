"""Keeps a set of actor processes alive: restarts one that dies (crash, OOM, kill -9) with backoff,
stops all on request. A restarted actor reuses its spool, so its pending uploads resume.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    process: subprocess.Popen | None = None
    restarts: int = 0
    exit_code: int | None = None
    next_start: float | None = None
    log_path: str | None = None


@dataclass
class Supervisor:
    children: list[Child]
    max_restarts: int = 20
    backoff_s: float = 1.0
    poll_s: float = 0.5
    _stopping: bool = field(default=False, init=False)

    def _start(self, child: Child) -> None:
        log_file = open(child.log_path, "ab") if child.log_path else None  # noqa: SIM115 (kept by the child)
        child.process = subprocess.Popen(child.argv, env=child.env, stdout=log_file, stderr=subprocess.STDOUT
                                         if log_file else None, start_new_session=True)
        if log_file:
            log_file.close()
        child.exit_code = None

    def start(self) -> None:
        for child in self.children:
            self._start(child)

    def poll(self) -> bool:
        """Restart children that died uncleanly; returns whether any is running or due to restart."""
        now = time.monotonic()
        busy = False
        for child in self.children:
            if child.process is not None:
                code = child.process.poll()
                if code is None:
                    busy = True
                    continue
                child.process, child.exit_code = None, code
                if code != 0 and not self._stopping and child.restarts < self.max_restarts:
                    child.restarts += 1
                    child.next_start = now + min(self.backoff_s * 2 ** (child.restarts - 1), 30.0)
                    log.warning("%s exited %s; restart %d scheduled", child.name, code, child.restarts)
                elif code != 0:
                    log.error("%s exited %s; not restarting", child.name, code)
            if child.next_start is not None:
                busy = True
                if now >= child.next_start:
                    child.next_start = None
                    self._start(child)
        return busy

    def run(self, duration_s: float | None = None, stop: threading.Event | None = None) -> None:
        deadline = time.monotonic() + duration_s if duration_s else None
        stop = stop or threading.Event()
        self.start()
        try:
            while self.poll() and not stop.is_set():
                if deadline and time.monotonic() >= deadline:
                    break
                stop.wait(self.poll_s)
        finally:
            self.stop()

    def run_in_background(self) -> threading.Event:
        """Start the children and keep them alive from a thread; set the returned event to stop."""
        stop = threading.Event()
        self.start()

        def loop() -> None:
            while not stop.is_set():
                self.poll()
                stop.wait(self.poll_s)

        threading.Thread(target=loop, name="fleet-supervisor", daemon=True).start()
        return stop

    def stop(self, grace_s: float = 60.0) -> None:
        """SIGTERM every child (actors finish their upload drain), SIGKILL after the grace period."""
        self._stopping = True
        for child in self.children:
            if child.process is not None and child.process.poll() is None:
                os.killpg(child.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for child in self.children:
            if child.process is None:
                continue
            try:
                child.exit_code = child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(child.process.pid, signal.SIGKILL)
                child.exit_code = child.process.wait()
            child.process = None
