"""Crash points for fault-injection tests, set with FAILPOINTS="name=action,...".

Actions: `kill` (SIGKILL this process), `raise` (RuntimeError), `sleep:<seconds>`.
Inert and nearly free when FAILPOINTS is empty (one dict lookup per call).
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
