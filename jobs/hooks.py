"""The engine's one extension point for higher layers (batches, waitpoints).

Hooks run inside the transaction of the transition that fired them, so what they
write commits or rolls back with it. `jobs` never imports `batches`; `batches`
registers here from its AppConfig.ready().
"""

from collections.abc import Callable
from dataclasses import dataclass
from uuid import UUID


@dataclass(frozen=True)
class TerminalJob:
    id: UUID
    tenant_id: UUID
    status: str
    batch_id: UUID | None
    parent_id: UUID | None


TerminalHook = Callable[[list[TerminalJob]], None]
_terminal_hooks: list[TerminalHook] = []


def on_jobs_terminal(hook: TerminalHook) -> TerminalHook:
    """Register `hook(jobs)`: called once per terminal transition, in its transaction."""
    if hook not in _terminal_hooks:
        _terminal_hooks.append(hook)
    return hook


def jobs_became_terminal(jobs: list[TerminalJob]) -> None:
    if not jobs:
        return
    for hook in _terminal_hooks:
        hook(jobs)


RequeueHook = Callable[[UUID, UUID | None], None]
_requeue_hooks: list[RequeueHook] = []


def on_job_requeued(hook: RequeueHook) -> RequeueHook:
    """Register `hook(job_id, batch_id)`: a terminal job was sent back to queued."""
    if hook not in _requeue_hooks:
        _requeue_hooks.append(hook)
    return hook


def job_requeued(job_id: UUID, batch_id: UUID | None) -> None:
    for hook in _requeue_hooks:
        hook(job_id, batch_id)
