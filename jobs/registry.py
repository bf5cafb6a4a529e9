"""The task registry: plain functions registered under a name, run by the engine.

    @task(name="reports.build", max_attempts=5, timeout=120, queue="heavy")
    def build(ctx: JobContext, payload): ...

The handler receives a context (progress, heartbeat, cancellation, waits) and the
job's JSON payload; it returns a JSON-serialisable result or raises.
"""

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.conf import settings


class UnknownTask(LookupError):
    pass


@dataclass(frozen=True)
class TaskSpec:
    name: str
    func: Callable[..., Any]
    max_attempts: int | None = None
    timeout: float | None = None
    queue: str | None = None

    @property
    def queue_name(self) -> str:
        return self.queue or settings.CELERY_DEFAULT_QUEUE


_tasks: dict[str, TaskSpec] = {}


def task(
    name: str, *, max_attempts: int | None = None, timeout: float | None = None, queue: str | None = None
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def register(func: Callable[..., Any]) -> Callable[..., Any]:
        existing = _tasks.get(name)
        if existing is not None and existing.func is not func:
            if f"{existing.func.__module__}.{existing.func.__qualname__}" != f"{func.__module__}.{func.__qualname__}":
                raise ValueError(f"task {name!r} is already registered by {existing.func!r}")
        _tasks[name] = TaskSpec(name=name, func=func, max_attempts=max_attempts, timeout=timeout, queue=queue)
        return func

    return register


def get_task(name: str) -> TaskSpec:
    try:
        return _tasks[name]
    except KeyError:
        raise UnknownTask(f"task {name!r} is not registered") from None


def is_registered(name: str) -> bool:
    return name in _tasks


def registered_names() -> list[str]:
    return sorted(_tasks)


def load_task_modules() -> None:
    for module in settings.TASK_MODULES:
        importlib.import_module(module)
