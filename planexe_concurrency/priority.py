"""Critical-path-first between tasks, through Luigi's own ``priority``.

With several workers, Luigi's scheduler hands a free worker the pending task of highest
``priority`` (ties: the one it heard of first). Every PlanExe task has priority 0, so when
more tasks are ready than workers are free, a task on the critical chain can wait behind a
side branch (measured: 0.3-0.4 s before EstimateTaskDurations on the double). Giving each
task the length of the longest chain of tasks still ahead of it (itself up to the root)
sends the critical chain first. Luigi raises a dependency's priority to its dependents'
(``_update_priority``); a chain length is never lower than a dependent's, so that changes
nothing here. Outputs do not change: only which ready task a free worker takes.
"""
from __future__ import annotations

import threading
from typing import Callable, Mapping, Sequence

import luigi


def remaining_chain(graph: Mapping[str, Sequence[str]], weight: Callable[[str], float] = lambda _: 1.0) -> dict[str, float]:
    """``{node: weight of the heaviest chain from node to a node nothing requires}``.

    ``graph`` maps each node to the nodes it requires (its dependencies).
    """
    dependents: dict[str, list[str]] = {node: [] for node in graph}
    for node, deps in graph.items():
        for dep in deps:
            dependents.setdefault(dep, []).append(node)
    memo: dict[str, float] = {}

    def ahead(node: str, trail: frozenset[str]) -> float:
        if node not in memo:
            if node in trail:
                raise ValueError(f"the task graph has a cycle through {node}")
            later = [ahead(d, trail | {node}) for d in dependents.get(node, ())]
            memo[node] = weight(node) + max(later, default=0.0)
        return memo[node]

    return {node: ahead(node, frozenset()) for node in dependents}


class CriticalPathPriority:
    """A ``priority`` getter for Luigi tasks: the remaining chain, learnt from the first task asked.

    Luigi reads ``priority`` first on the task it was given to build (``Worker.add``), so that
    task's graph is walked once (``requires()``, as Luigi itself does) and every task under it
    gets its chain length; a task asked before its root was seen is its own root.
    """

    def __init__(self, enabled: Callable[[], bool] = lambda: True) -> None:
        self._enabled = enabled
        self._lock = threading.Lock()
        self._by_id: dict[str, float] = {}

    def __call__(self, task: luigi.Task) -> float:
        with self._lock:
            if task.task_id not in self._by_id:
                self._learn(task)
            return self._by_id[task.task_id]

    def _learn(self, root: luigi.Task) -> None:
        if not self._enabled():
            self._by_id[root.task_id] = 0
            return
        graph: dict[str, list[str]] = {}
        stack = [root]
        while stack:
            task = stack.pop()
            if task.task_id in graph:
                continue
            deps = luigi.task.flatten(task.requires())
            graph[task.task_id] = [dep.task_id for dep in deps]
            stack.extend(deps)
        for task_id, chain in remaining_chain(graph).items():
            self._by_id[task_id] = max(chain, self._by_id.get(task_id, 0))

    def clear(self) -> None:
        with self._lock:
            self._by_id.clear()
