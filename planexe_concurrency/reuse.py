"""Reuse LLM instances across attempts instead of building one per attempt, one thread at a time.

    get_llm = ReusedInstances(get_llm)      # same signature; one instance per (thread, name)
    get_llm.prime(["my-model"], count=4)    # in a parent before it forks: children inherit them

Why: PlanExe builds a fresh LLM for every attempt (``LLMModelFromName.create_llm`` calls
``get_llm(name)``). For OpenAI-compatible providers each fresh instance builds a fresh HTTP
client, whose TLS context alone costs ~40 ms (measured, httpx 0.28), and opens a fresh
connection on its first call. Under ``--workers N`` every task runs in a new forked process,
so only an instance built in the parent *before* the fork can save that: one for each call a
task may have in flight, or a 20-call fan-out spends its first ~0.5 s building clients. The engine runs
each batch of calls in threads of its own, which end with the batch: an instance a finished
thread held is handed to the next thread that asks (measured: ~45 ms a call otherwise).

Safety rules, each enforced here:

* an instance is held by **one thread at a time**: handed out again only to the same thread
  while it lives, and to another thread only once the one that had it has ended (an HTTP
  client's connection pool and llama-index's callback state are not meant to be shared by
  threads at once);
* an instance crosses a fork only if **nobody in the parent ever got it** (:meth:`prime`
  builds without handing out); instances handed out before a fork are forgotten in the
  child, so a child never writes to a socket its parent opened;
* only calls with a name and no keyword arguments are reused; anything else is passed
  through unchanged.
"""
from __future__ import annotations

import collections
import concurrent.futures
import os
import threading
import weakref
from typing import Any, Callable, Iterable

_all: "weakref.WeakSet[ReusedInstances]" = weakref.WeakSet()


class _Lease:
    """One thread's hold on an instance; when the thread ends (and its locals go), the instance is free again."""

    __slots__ = ("idle", "instance", "pid")

    def __init__(self, idle: "collections.deque[Any]", instance: Any) -> None:
        self.idle = idle
        self.instance = instance
        self.pid = os.getpid()

    def __del__(self) -> None:
        try:
            if os.getpid() == self.pid:  # not a lease of the parent's, dropped in a forked child
                self.idle.append(self.instance)  # deque.append: atomic, no lock taken in a finaliser
        except Exception:  # pragma: no cover - interpreter shutdown (os already torn down)
            pass


class ReusedInstances:
    """Wraps a factory ``factory(name, **kwargs)``; see the module docstring for the rules."""

    __slots__ = ("factory", "_local", "_primed", "_idle", "_lock", "__weakref__")

    def __init__(self, factory: Callable[..., Any]) -> None:
        self.factory = factory
        self._local = threading.local()
        self._primed: dict[str, list[Any]] = {}
        self._idle: dict[str, collections.deque[Any]] = {}  # freed by threads that ended
        self._lock = threading.Lock()
        _all.add(self)

    def __call__(self, name: str | None = None, **kwargs: Any) -> Any:
        if not name or kwargs:
            return self.factory(name, **kwargs)
        mine: dict[str, _Lease] = self._local.__dict__.setdefault("instances", {})
        if name not in mine:
            with self._lock:
                idle = self._idle.setdefault(name, collections.deque())
                primed = self._primed.get(name)
                instance = primed.pop() if primed else None
            if instance is None:
                try:
                    instance = idle.pop()
                except IndexError:
                    instance = self.factory(name)
            mine[name] = _Lease(idle, instance)
        return mine[name].instance

    def prime(
        self, names: Iterable[str], prepare: Callable[[Any], object] | None = None, count: int = 1, threads: int = 1
    ) -> None:
        """Have ``count`` instances per name built and never handed out (so that forked children may use them).

        ``prepare(instance)`` may finish what the instance would build lazily on first use
        (an HTTP client, say), so that the children inherit that too. Instances primed
        before are counted: priming again builds only what is missing, on up to ``threads``
        threads (which have all ended when this returns).
        """

        def build(name: str) -> None:
            instance = self.factory(name)
            if prepare is not None:
                prepare(instance)
            with self._lock:
                self._primed.setdefault(name, []).append(instance)

        for name in names:
            with self._lock:
                missing = count - len(self._primed.get(name, ()))
            if missing <= 0:
                continue
            if threads <= 1 or missing == 1:
                for _ in range(missing):
                    build(name)
                continue
            with concurrent.futures.ThreadPoolExecutor(min(threads, missing), thread_name_prefix="reuse-prime") as pool:
                for future in [pool.submit(build, name) for _ in range(missing)]:
                    future.result()

    def clear(self) -> None:
        """Forget every instance, primed or not: the next call builds afresh (its model's settings changed)."""
        with self._lock:
            self._primed.clear()
        self._forget_handed_out()

    def _forget_handed_out(self) -> None:
        self._local = threading.local()
        self._idle = {}  # used by the parent's threads: their connections are the parent's
        self._lock = threading.Lock()  # another thread of the parent may have held it at the fork


def _after_fork_in_child() -> None:
    for reused in list(_all):
        reused._forget_handed_out()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
