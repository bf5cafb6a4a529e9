"""Crash points for fault-injection tests, set with FAILPOINTS="name=action,...".

Actions: `kill` (SIGKILL this process), `raise` (RuntimeError), `sleep:<seconds>`.
Inert and nearly free when FAILPOINTS is empty (one dict lookup per call).

Points, in the order a job meets them:
- `intake_before_dispatch` (batches.intake): a chunk's children written, not yet dispatched
- `before_publish` (jobs.dispatch.send_dispatched): the claim committed, its Celery
  messages not yet sent
- `before_start` (jobs.runner.run): a message delivered, the start CAS not yet run
- `after_start_commit`: running, the handler not yet called
- `before_finish`: the handler returned, its outcome not yet written
- `after_finish_commit`: the outcome committed, the message not yet acknowledged
- `complete_batch` (batches.tasks): the chord callback received, nothing done yet
"""

import os
import signal
import time
from functools import cache

from django.conf import settings


@cache
def _parsed(spec: str) -> dict[str, str]:
    points: dict[str, str] = {}
    for part in spec.split(","):
        if "=" in part:
            name, action = part.split("=", 1)
            points[name.strip()] = action.strip()
    return points


def failpoint(name: str) -> None:
    action = _parsed(settings.FAILPOINTS or "").get(name)
    if action is None:
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "raise":
        raise RuntimeError(f"failpoint {name}")
    elif action.startswith("sleep:"):
        time.sleep(float(action.split(":", 1)[1]))
