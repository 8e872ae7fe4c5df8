"""PlanExe's progress/stop callback runs in the process that created it, never in a forked task.

PlanExe hands every task ``_pipeline_executor_callback``, a bound method of the
``ExecutePipeline`` that called ``luigi.build``; PlanExe's database worker writes progress
and a heartbeat to PostgreSQL in it, on the connection that process opened. Under
``--workers N`` Luigi runs each task in a forked child; called there, the callback would use
the parent's connection from another process (measured: hangs in libpq, crossed
transactions, SSL errors).

So, while the patches are on:

* in the Luigi parent, as Luigi schedules (before it forks), every task that carries a
  callback is remembered by task id, and an :class:`~planexe_concurrency.owner_calls.OwnerCallServer`
  is started once per process;
* in a forked child, just before the task runs, the task's callback is swapped for a
  :class:`RemoteCallback`: calling it asks the parent to call *the parent's own instance*
  of that task's callback with the same ``(task, duration)``, one call at a time, and hands
  back what happened: continue, ``PipelineStopRequested`` (raised in the child, as PlanExe
  expects), or another error (raised as :class:`CallbackFailed`, which aborts the task as
  any error from PlanExe's callback does);
* in the parent itself (one worker) the callback is called directly, under the same lock.

Every caller, PlanExe's own ``create_llm_executor`` or ours, reads the callback from the
task at call time, so none of them needs to know. With luigid and several hosts there is no
parent process to call (each host's ``luigi`` command builds its own tasks, and PlanExe's
callback never crosses a machine): there, a stop travels as PlanExe's stop flag file.
"""
from __future__ import annotations

import logging
import weakref
from typing import Any

import luigi

from planexe_concurrency.owner_calls import OwnerCallServer, OwnerGone

from .planexe import load_planexe

logger = logging.getLogger("planexe_concurrency")

CALLBACK_PARAMETER = "_pipeline_executor_callback"

# The parent's own task instances, by task id (Luigi's instance cache keeps them alive).
_tasks: "weakref.WeakValueDictionary[str, luigi.Task]" = weakref.WeakValueDictionary()
_server: OwnerCallServer | None = None


class CallbackFailed(RuntimeError):
    """PlanExe's callback raised something other than ``PipelineStopRequested`` in the parent."""


def callback_of(task: luigi.Task) -> Any:
    return getattr(task, CALLBACK_PARAMETER, None)


def _handle(request: dict[str, Any]) -> dict[str, Any]:
    """In the parent: call the parent's own task's callback, as PlanExe would."""
    task = _tasks.get(request["task_id"])
    callback = callback_of(task) if task is not None else None
    if callback is None:
        return {"outcome": "error", "type": "LookupError", "message": f"no task {request['task_id']} with a callback in the parent"}
    try:
        callback(task, request["duration"])
    except load_planexe().PipelineStopRequested as exc:
        return {"outcome": "stop", "message": str(exc)}
    except Exception as exc:
        logger.warning("task=%s PlanExe's callback raised %s: %s", task.task_family, type(exc).__name__, exc)
        return {"outcome": "error", "type": type(exc).__name__, "message": str(exc)}
    return {"outcome": "continue"}


def server() -> OwnerCallServer:
    global _server
    if _server is None:
        _server = OwnerCallServer(_handle)
    return _server


def remember(*tasks: luigi.Task) -> None:
    """In the Luigi parent, before any fork: these tasks' callbacks are called here, for every worker."""
    for task in tasks:
        if callback_of(task) is None or isinstance(callback_of(task), RemoteCallback):
            continue
        srv = server()
        if not srv.in_owner:
            continue  # a forked task scheduling tasks of its own: its parent owns the callback
        _tasks[task.task_id] = task
        srv.start()


class RemoteCallback:
    """Stands in for PlanExe's callback inside a forked task: the parent makes the call."""

    def __init__(self, owner: OwnerCallServer, task_id: str) -> None:
        self.owner = owner
        self.task_id = task_id

    def __call__(self, task: luigi.Task, duration: float) -> None:
        stop = load_planexe().PipelineStopRequested
        try:
            reply = self.owner.call({"task_id": self.task_id, "duration": float(duration)})
        except OwnerGone as exc:
            # The run is over for this worker: stop as PlanExe stops (its stop flag tells the others).
            raise stop(f"{task.task_family}: {exc}") from None
        outcome = reply.get("outcome")
        if outcome == "continue":
            return
        if outcome == "stop":
            raise stop(reply.get("message", ""))
        raise CallbackFailed(f"PlanExe's callback failed in the parent: {reply.get('type')}: {reply.get('message')}")


def call_in_owner(task: luigi.Task) -> None:
    """In a forked child, just before ``run()``: route the task's callback to the parent."""
    callback = callback_of(task)
    if callback is None or isinstance(callback, RemoteCallback) or _server is None or _server.in_owner:
        return  # no callback, or this is the process that owns it (one worker: no fork)
    setattr(task, CALLBACK_PARAMETER, RemoteCallback(_server, task.task_id))


def call_callback(task: luigi.Task, duration: float) -> None:
    """What our executors call after every attempt: PlanExe's callback, in the process that owns it."""
    callback = callback_of(task)
    if callback is None:
        return
    if isinstance(callback, RemoteCallback):
        callback(task, duration)
        return
    with server().exclusive:  # in the owner: one call at a time, the children's calls included
        callback(task, duration)


@luigi.Task.event_handler(luigi.Event.DEPENDENCY_DISCOVERED)
def _remember_scheduled(task: luigi.Task, dependency: luigi.Task) -> None:
    remember(task, dependency)


@luigi.Task.event_handler(luigi.Event.START)
def _route_to_owner(task: luigi.Task) -> None:
    call_in_owner(task)
