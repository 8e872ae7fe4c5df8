"""LLM instances reused: same instance in one thread, one thread at a time, never across forks."""
from __future__ import annotations

import itertools
import os
import threading
from typing import Any

import pytest

from conftest import true_in_a_forked_child
from planexe_concurrency.reuse import ReusedInstances


class Factory:
    def __init__(self) -> None:
        self.counter = itertools.count(1)
        self.calls: list[tuple[Any, dict[str, Any]]] = []

    def __call__(self, name: Any = None, **kwargs: Any) -> tuple[Any, int]:
        self.calls.append((name, kwargs))
        return (name, next(self.counter))


def test_one_instance_per_name_within_a_thread() -> None:
    get = ReusedInstances(Factory())
    a = get("a")
    assert get("a") is a and get("b") is not a and get("b") is get("b")


def test_kwargs_or_no_name_are_passed_through_every_time() -> None:
    factory = Factory()
    get = ReusedInstances(factory)
    assert get("a", temperature=0.5) != get("a", temperature=0.5)
    assert get() != get()
    assert factory.calls[0] == ("a", {"temperature": 0.5}) and factory.calls[2] == (None, {})


def test_threads_never_share_an_instance() -> None:
    get = ReusedInstances(Factory())
    mine = get("a")
    seen: list[Any] = []
    barrier = threading.Barrier(4)

    def work() -> None:
        barrier.wait()
        first = get("a")
        assert get("a") is first
        seen.append(first)
        barrier.wait()  # all four hold theirs at once

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(x) for x in seen}) == 4 and all(x is not mine for x in seen)


def test_a_primed_instance_goes_to_one_thread_only() -> None:
    factory = Factory()
    get = ReusedInstances(factory)
    get.prime(["a"])
    get.prime(["a"])  # already primed: not built again
    assert len(factory.calls) == 1
    primed = ("a", 1)
    other: list[Any] = []
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        other.append(get("a"))
        holding.set()
        release.wait()

    t = threading.Thread(target=hold)
    t.start()
    holding.wait()
    assert other == [primed] and get("a") != primed  # held by the other thread: this one gets its own
    release.set()
    t.join()


def test_an_instance_is_handed_to_the_next_thread_once_the_one_that_had_it_ended() -> None:
    """The engine's threads end with each batch; the next batch's threads reuse what they built."""
    factory = Factory()
    get = ReusedInstances(factory)
    seen: list[Any] = []
    for _ in range(3):
        t = threading.Thread(target=lambda: seen.append(get("a")))
        t.start()
        t.join()
    assert seen == [("a", 1)] * 3 and len(factory.calls) == 1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_fork_inherits_primed_instances_but_not_handed_out_ones() -> None:
    get = ReusedInstances(Factory())
    handed_out = get("used")
    get.prime(["fresh"])
    assert true_in_a_forked_child(
        lambda: get("used") is not handed_out and get("fresh") == ("fresh", 2) and get("fresh") is get("fresh")
    )
    assert get("used") is handed_out  # the parent keeps its own


def test_the_pipeline_reuses_planexe_llms_only_while_enabled() -> None:
    from pipeline_patches import pipeline as patches
    from pipeline_patches.flag_toggle import warm_up
    from pipeline_patches.planexe import load_planexe

    pe = load_planexe()
    model = pe.LLMModelFromName("simulated")
    assert patches.is_enabled()
    assert pe.llm_executor.get_llm is patches.REUSED_LLMS
    assert model.create_llm() is model.create_llm()
    try:
        patches.disable()
        assert model.create_llm() is not model.create_llm()
    finally:
        patches.enable()
    warm_up(["simulated", "no-such-model"])  # a broken model is left for the run to report
    assert "simulated" in patches.REUSED_LLMS._primed and "no-such-model" not in patches.REUSED_LLMS._primed


def test_the_fork_hook_forgets_handed_out_instances_and_keeps_primed_ones() -> None:
    """The same hook os.register_at_fork runs in a child, called in-process (coverage sees it)."""
    from planexe_concurrency import reuse

    get = ReusedInstances(Factory())
    used = get("used")
    get.prime(["fresh"])
    reuse._after_fork_in_child()
    assert get("used") is not used and get("fresh") == ("fresh", 2)


def test_prime_can_prepare_the_instance() -> None:
    prepared: list[Any] = []
    get = ReusedInstances(Factory())
    get.prime(["a"], prepare=prepared.append)
    assert prepared == [("a", 1)] and get("a") == ("a", 1)


def test_warm_up_builds_an_http_client_for_each_call_a_task_may_have_in_flight(
    monkeypatch: pytest.MonkeyPatch, luigi_config: Any
) -> None:
    from conftest import set_concurrency
    from pipeline_patches import pipeline as patches
    from pipeline_patches.flag_toggle import build_http_client, warm_up

    monkeypatch.setenv("PLANEXE_SIMLLM_URL", "http://127.0.0.1:9")
    set_concurrency(luigi_config, max_parallel=3, task_overrides='{"CreateWBSLevel3Task": {"max_parallel": 6}}')
    for name in ("simulated-http", "simulated"):
        patches.REUSED_LLMS._primed.pop(name, None)
    warm_up(["simulated-http", "simulated"])
    primed = patches.REUSED_LLMS._primed.pop("simulated-http")
    assert len(primed) == 6 and len({id(llm) for llm in primed}) == 6  # the widest fan-out, for the first model
    assert all(llm._client is not None for llm in primed)  # built in the parent, inherited by forked tasks
    assert len({id(llm._client) for llm in primed}) == 6  # each its own: one thread at a time uses one
    assert len(patches.REUSED_LLMS._primed.pop("simulated")) == 1  # a fallback model: one
    assert [t.name for t in threading.enumerate() if "warm-up" in t.name or "reuse-prime" in t.name] == []
    warm_up(["simulated-http"], widest=1)  # a sequential run
    assert len(patches.REUSED_LLMS._primed.pop("simulated-http")) == 1
    build_http_client(object())  # an LLM without one is left alone


def test_prime_builds_what_is_missing_on_threads_and_each_goes_to_one_thread() -> None:
    factory = Factory()
    get = ReusedInstances(factory)
    get.prime(["a"], count=5, threads=3)
    get.prime(["a"], count=5, threads=3)  # nothing missing: nothing built
    assert len(factory.calls) == 5
    seen: list[Any] = []
    barrier = threading.Barrier(5)

    def work() -> None:
        seen.append(get("a"))
        barrier.wait()

    threads = [threading.Thread(target=work) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(n for _, n in seen) == [1, 2, 3, 4, 5] and len(factory.calls) == 5


def test_the_warm_up_builds_the_openai_models_the_client_defers() -> None:
    """Built lazily, concurrent first responses race (one gets pydantic's placeholder serializer)."""
    chat = pytest.importorskip("openai.types.chat")
    from pipeline_patches.flag_toggle import build_deferred_models, import_lazy_modules

    import_lazy_modules()
    assert type(chat.ChatCompletion.__pydantic_serializer__).__name__ == "SchemaSerializer"
    assert type(chat.ChatCompletionMessage.__pydantic_serializer__).__name__ == "SchemaSerializer"
    assert build_deferred_models() == 0  # nothing left to build


def test_clear_forgets_primed_and_idle_instances() -> None:
    factory = Factory()
    get = ReusedInstances(factory)
    get.prime(["a"])
    t = threading.Thread(target=get, args=("b",))
    t.start()
    t.join()
    get.clear()
    assert get("a") == ("a", 3) and len(factory.calls) == 3


def test_deferred_models_are_built_only_where_planexe_would_have_them_built(monkeypatch: pytest.MonkeyPatch) -> None:
    """On older pins PlanExe's activity log loses events with a nested response: building them would add lines."""
    import sys
    import types

    from pipeline_patches import flag_toggle

    assert flag_toggle.nested_responses_serialise()  # this venv's pydantic builds them on first use
    rebuilt: list[str] = []

    class Unbuilt:
        __pydantic_complete__ = False

        @classmethod
        def model_rebuild(cls, force: bool = False) -> None:
            rebuilt.append(cls.__name__)

    module = types.ModuleType("deferred_probe_models")
    Unbuilt.__module__ = module.__name__
    module.Unbuilt = Unbuilt  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setattr(flag_toggle, "nested_responses_serialise", lambda: False)
    assert flag_toggle.build_deferred_models((module.__name__,)) == 0 and rebuilt == []
    monkeypatch.setattr(flag_toggle, "nested_responses_serialise", lambda: True)
    assert flag_toggle.build_deferred_models((module.__name__,)) == 1 and rebuilt == ["Unbuilt"]
