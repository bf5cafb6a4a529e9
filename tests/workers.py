"""Real Celery worker processes for tests, each in its own process group."""

import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def wait_until(predicate: Callable[[], object], timeout: float = 30, interval: float = 0.05, what: str = "") -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


class Worker:
    """`celery -A batchplatform worker` in a new session (process group)."""

    def __init__(
        self,
        database_name: str,
        *,
        name: str | None = None,
        concurrency: int = 2,
        beat: bool = False,
        queues: str | None = None,
        env: dict[str, str] | None = None,
        pool: str = "prefork",
    ):
        self.name = name or f"w{uuid.uuid4().hex[:8]}"
        self.hostname = f"{self.name}@bptest"
        self.logfile = Path(tempfile.gettempdir()) / f"bptest-{self.name}-{uuid.uuid4().hex[:6]}.log"
        self.app_name = f"bptest-{self.name}"
        full_env = dict(os.environ)
        base = full_env["DATABASE_URL"].rsplit("/", 1)[0]
        full_env.update(
            DATABASE_URL=f"{base}/{database_name}",
            DATABASE_APPLICATION_NAME=self.app_name,
            CELERY_SKIP_CHECKS="1",
            PYTHONUNBUFFERED="1",
        )
        full_env.update(env or {})
        cmd = [
            sys.executable, "-m", "celery", "-A", "batchplatform", "worker",
            "-n", self.hostname, "-c", str(concurrency), "-P", pool, "-l", "info",
            "--without-mingle", "--without-gossip",
        ]
        if queues:
            cmd += ["-Q", queues]
        if beat:
            cmd += ["-B", "--schedule", str(self.logfile.with_suffix(".beat"))]
        self._log = open(self.logfile, "w")
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=full_env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, timeout: float = 30) -> "Worker":
        wait_until(lambda: "ready." in self.log() or self.proc.poll() is not None, timeout, what="worker ready")
        if self.proc.poll() is not None:
            raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
        return self

    def log(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def child_pids(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.pid)], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    def kill(self) -> None:
        """SIGKILL the whole process group: no cleanup, no acks, no goodbyes."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=10)

    def terminate(self, timeout: float = 30) -> int:
        """SIGTERM the main process (Celery's warm shutdown) and wait for it."""
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def stop(self) -> None:
        self.kill()
        try:
            os.killpg(self.pid, signal.SIGKILL)  # stray pool children
        except (ProcessLookupError, PermissionError):
            pass
        self._log.close()
