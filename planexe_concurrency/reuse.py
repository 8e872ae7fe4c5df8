"""Reuse LLM instances per thread instead of building one per attempt.

    get_llm = ReusedInstances(get_llm)      # same signature; one instance per (thread, name)
    get_llm.prime(["my-model"])             # in a parent before it forks: children inherit it

Why: PlanExe builds a fresh LLM for every attempt (``LLMModelFromName.create_llm`` calls
``get_llm(name)``). For OpenAI-compatible providers each fresh instance builds a fresh HTTP
client, whose TLS context alone costs ~40 ms (measured, httpx 0.28), and opens a fresh
connection on its first call. Under ``--workers N`` every task runs in a new forked process,
so only an instance built in the parent *before* the fork can save that.

Safety rules, each enforced here:

* an instance handed out is only ever handed out again to the **same thread** (an HTTP
  client's connection pool and llama-index's callback state are not meant to be shared);
* an instance crosses a fork only if **nobody in the parent ever got it** (:meth:`prime`
  builds without handing out); instances handed out before a fork are forgotten in the
  child, so a child never writes to a socket its parent opened;
* only calls with a name and no keyword arguments are reused; anything else is passed
  through unchanged.
"""
from __future__ import annotations

import os
import threading
import weakref
from typing import Any, Callable, Iterable

_all: "weakref.WeakSet[ReusedInstances]" = weakref.WeakSet()


class ReusedInstances:
    """Wraps a factory ``factory(name, **kwargs)``; see the module docstring for the rules."""

    __slots__ = ("factory", "_local", "_primed", "_lock", "__weakref__")

    def __init__(self, factory: Callable[..., Any]) -> None:
        self.factory = factory
        self._local = threading.local()
        self._primed: dict[str, Any] = {}
        self._lock = threading.Lock()
        _all.add(self)

    def __call__(self, name: str | None = None, **kwargs: Any) -> Any:
        if not name or kwargs:
            return self.factory(name, **kwargs)
        mine: dict[str, Any] = self._local.__dict__.setdefault("instances", {})
        if name not in mine:
            with self._lock:
                primed = self._primed.pop(name, None)
            mine[name] = primed if primed is not None else self.factory(name)
        return mine[name]

    def prime(self, names: Iterable[str], prepare: Callable[[Any], object] | None = None) -> None:
        """Build one instance per name without handing it out (so that forked children may use it).

        ``prepare(instance)`` may finish what the instance would build lazily on first use
        (an HTTP client, say), so that the children inherit that too.
        """
        for name in names:
            with self._lock:
                if name in self._primed:
                    continue
            instance = self.factory(name)
            if prepare is not None:
                prepare(instance)
            with self._lock:
                self._primed.setdefault(name, instance)

    def _forget_handed_out(self) -> None:
        self._local = threading.local()
        self._lock = threading.Lock()  # another thread of the parent may have held it at the fork


def _after_fork_in_child() -> None:
    for reused in list(_all):
        reused._forget_handed_out()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
