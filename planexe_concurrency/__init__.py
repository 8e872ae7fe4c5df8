"""planexe-concurrency: run PlanExe's independent LLM calls concurrently, with the same outputs.

The engine in this package knows nothing of PlanExe; the PlanExe-specific task subclasses
live in the sibling package ``pipeline_patches``.
"""
from .config import ConfigError, FanOutSettings, RetryPolicy, load_settings
from .events import ItemEvent, ItemState, JsonlEventLog, LoggingListener, default_listeners
from .fanout import FanOut, FanOutError, ItemFailedError
from .llm_executor import ConcurrentLLMExecutor, ExhaustedModelsError, StopCheck
from .ratelimit import SharedSlotFile
from .resume import ItemCache, atomic_write_text, json_item_cache

__version__ = "0.1.0"

__all__ = [
    "ConcurrentLLMExecutor",
    "ConfigError",
    "ExhaustedModelsError",
    "FanOut",
    "FanOutError",
    "FanOutSettings",
    "ItemCache",
    "ItemEvent",
    "ItemFailedError",
    "ItemState",
    "JsonlEventLog",
    "LoggingListener",
    "RetryPolicy",
    "SharedSlotFile",
    "StopCheck",
    "atomic_write_text",
    "default_listeners",
    "json_item_cache",
    "load_settings",
]
