"""Deterministic response generator shared by the in-process LLM and the HTTP server.

Everything here is a pure function of the request (messages, tool schemas, model name),
so a benchmark or a test sees the same answer for the same request no matter how many
threads ask, in which order, or in which process.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import random
import re
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

logger = logging.getLogger(__name__)

__all__ = [
    "LatencyModel",
    "SimResponse",
    "SimToolCall",
    "find_schema_in_text",
    "json_for_schema",
    "message_text",
    "normalize_for_hash",
    "request_key",
    "respond",
]

# ---------------------------------------------------------------------------
# Request identity
# ---------------------------------------------------------------------------

_UUID_RE = re.compile(
    r"(?<![0-9a-fA-F])[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}(?![0-9a-fA-F])"
)


def normalize_for_hash(text: str) -> str:
    """Rename every UUID to ``uuid-1``, ``uuid-2``… by first appearance.

    PlanExe puts fresh random ids in some prompts; without this, one id would change
    every simulated answer and break byte-for-byte comparisons between runs.
    """
    names: dict[str, str] = {}

    def _sub(match: re.Match[str]) -> str:
        found = match.group(0).lower()
        if found not in names:
            names[found] = f"uuid-{len(names) + 1}"
        return names[found]

    return _UUID_RE.sub(_sub, text)


def message_text(content: Any) -> str:
    """The plain text of a message content: a string, None, or OpenAI content parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        parts: list[str] = []
        for part in content:
            if isinstance(part, Mapping):
                if isinstance(part.get("text"), str):
                    parts.append(part["text"])
            elif isinstance(part, str):
                parts.append(part)
        return "\n".join(parts)
    return str(content)


def _as_message_dict(message: Any) -> dict[str, Any]:
    """Accept OpenAI dicts as well as objects with ``role``/``content`` (e.g. llama-index ChatMessage)."""
    if isinstance(message, Mapping):
        return dict(message)
    role = getattr(message, "role", "user")
    role = getattr(role, "value", role)
    return {"role": str(role), "content": getattr(message, "content", None)}


def _canonical_messages(messages: Iterable[Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for raw in messages:
        msg = _as_message_dict(raw)
        item: dict[str, Any] = {"role": str(msg.get("role", "user")), "content": message_text(msg.get("content"))}
        # Tool-call turns carry no content; keep what distinguishes them.
        if msg.get("tool_calls"):
            item["tool_calls"] = msg["tool_calls"]
        if msg.get("tool_call_id"):
            item["tool_call_id"] = msg["tool_call_id"]
        out.append(item)
    return out


def request_key(messages: list[dict], tools: list | None, model: str) -> str:
    """sha256 of the canonical request, after UUID renaming: same request, same key."""
    canonical = json.dumps(
        {"messages": _canonical_messages(messages), "tools": tools or None, "model": model},
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
        default=str,
    )
    return hashlib.sha256(normalize_for_hash(canonical).encode("utf-8")).hexdigest()


def _rng(*parts: object) -> random.Random:
    """A private RNG seeded from the given parts, so each field/draw is independently stable."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8")).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


# ---------------------------------------------------------------------------
# JSON schema -> value
# ---------------------------------------------------------------------------

_WORDS = (
    "lorem ipsum dolor amet harbor amber river stone garden signal bridge cedar meadow "
    "orbit pixel lantern copper willow summit canvas beacon ember falcon glacier harvest "
    "island juniper kernel ledger marble nectar oasis prairie quartz ribbon saffron timber "
    "umbra velvet walnut yonder zephyr anchor basalt cobalt delta engine fable granite "
    "horizon indigo jasper kettle lumen mosaic nimbus opal pepper quill rowan sable"
).split()

_MAX_DEPTH = 8
_NUMERIC_SPAN = 100


def _label(name: str) -> str:
    label = re.sub(r"[^0-9A-Za-z]+", "_", name).strip("_").lower()
    return label or "value"


class _SchemaValueBuilder:
    """Walks a JSON schema and builds one valid value; every choice is seeded by (seed, path)."""

    def __init__(self, root: Mapping[str, Any], seed: str, ids: Sequence[str | int] = ()) -> None:
        self.root = root
        self.seed = seed
        self.ids = [i for i in ids if isinstance(i, str)]
        self.int_ids = [i for i in ids if isinstance(i, int)]
        self._next_id = 0
        self._next_int_id = 0

    def rng(self, path: str) -> random.Random:
        return _rng(self.seed, path)

    # -- schema plumbing ----------------------------------------------------
    def resolve_ref(self, ref: str) -> Mapping[str, Any]:
        if not ref.startswith("#"):
            logger.debug("external $ref %r treated as any", ref)
            return {}
        node: Any = self.root
        for token in ref[1:].split("/"):
            if not token:
                continue
            token = token.replace("~1", "/").replace("~0", "~")
            if isinstance(node, Mapping) and token in node:
                node = node[token]
            else:
                logger.debug("unresolvable $ref %r treated as any", ref)
                return {}
        return node if isinstance(node, Mapping) else {}

    def expand(self, schema: Any, seen: tuple[str, ...] = ()) -> dict[str, Any]:
        """Resolve ``$ref`` and merge ``allOf`` so the caller sees one flat schema."""
        if schema is True or schema is None:
            return {}
        if schema is False or not isinstance(schema, Mapping):
            return {}
        out = dict(schema)
        ref = out.pop("$ref", None)
        if isinstance(ref, str):
            if ref in seen:  # pathological self-reference without any indirection
                return {k: v for k, v in out.items()}
            target = self.expand(self.resolve_ref(ref), seen + (ref,))
            merged = dict(target)
            merged.update(out)  # siblings such as description/default win
            out = merged
        all_of = out.pop("allOf", None)
        if isinstance(all_of, list):
            merged = {}
            props: dict[str, Any] = {}
            required: list[str] = []
            for sub in all_of:
                sub_x = self.expand(sub, seen)
                props.update(sub_x.get("properties", {}) or {})
                for r in sub_x.get("required", []) or []:
                    if r not in required:
                        required.append(r)
                merged.update(sub_x)
            merged.update(out)
            if props:
                merged["properties"] = {**props, **(out.get("properties") or {})}
            if required:
                merged["required"] = list(dict.fromkeys(required + list(out.get("required") or [])))
            out = merged
        return out

    # -- values ---------------------------------------------------------------
    def value(self, schema: Any, path: str, name: str, depth: int) -> Any:
        s = self.expand(schema)
        if "const" in s:
            return copy.deepcopy(s["const"])
        if isinstance(s.get("enum"), list) and s["enum"]:
            return copy.deepcopy(self.rng(path + "#enum").choice(s["enum"]))
        for union_key in ("anyOf", "oneOf"):
            branches = s.get(union_key)
            if isinstance(branches, list) and branches:
                return self.union(s, union_key, branches, path, name, depth)
        typ = s.get("type")
        if isinstance(typ, list):
            non_null = [t for t in typ if t != "null"]
            if not non_null:
                return None
            typ = non_null[0] if depth < _MAX_DEPTH or "null" not in typ else "null"
        if typ is None:
            if "properties" in s or "additionalProperties" in s:
                typ = "object"
            elif "items" in s or "prefixItems" in s:
                typ = "array"
            elif "default" in s:
                return copy.deepcopy(s["default"])
            else:
                typ = "string"
        if typ == "object":
            return self.object(s, path, name, depth)
        if typ == "array":
            return self.array(s, path, name, depth)
        if typ == "string":
            return self.string(s, path, name)
        if typ == "integer":
            if self.int_ids and _ID_FIELD.search(_label(name)) and "enum" not in s:
                chosen = self.int_ids[self._next_int_id % len(self.int_ids)]
                self._next_int_id += 1
                return chosen
            return self.integer(s, path)
        if typ == "number":
            return self.number(s, path)
        if typ == "boolean":
            return self.rng(path + "#bool").random() < 0.5
        if typ == "null":
            return None
        logger.debug("unknown schema type %r at %s; using default or string", typ, path)
        return copy.deepcopy(s["default"]) if "default" in s else self.string({}, path, name)

    def union(self, s: Mapping[str, Any], key: str, branches: list, path: str, name: str, depth: int) -> Any:
        expanded = [self.expand(b) for b in branches]
        non_null = [b for b in expanded if b.get("type") != "null"]
        if not non_null or (depth >= _MAX_DEPTH and len(non_null) < len(expanded)):
            return None
        chosen = dict(non_null[0])
        for inherited in ("description", "title"):
            if inherited in s and inherited not in chosen:
                chosen[inherited] = s[inherited]
        return self.value(chosen, path, name, depth)

    def object(self, s: Mapping[str, Any], path: str, name: str, depth: int) -> dict[str, Any]:
        props = s.get("properties") or {}
        required = set(s.get("required") or [])
        result: dict[str, Any] = {}
        for prop, sub in props.items():
            if depth >= _MAX_DEPTH and prop not in required:
                continue
            result[prop] = self.value(sub, f"{path}/{prop}", prop, depth + 1)
        extra = s.get("additionalProperties")
        min_props = int(s.get("minProperties", 0) or 0)
        if not props and isinstance(extra, (Mapping, bool)) and extra is not False:
            count = max(min_props, 0 if depth >= _MAX_DEPTH else 2)
            max_props = s.get("maxProperties")
            if isinstance(max_props, int):
                count = min(count, max_props)
            for i in range(count):
                key = f"{_label(name)}_{i + 1}"
                result[key] = self.value(extra if isinstance(extra, Mapping) else {}, f"{path}/{key}", key, depth + 1)
        return result

    def array(self, s: Mapping[str, Any], path: str, name: str, depth: int) -> list[Any]:
        prefix = s.get("prefixItems")
        lo_given = s.get("minItems")
        hi_given = s.get("maxItems")
        if isinstance(prefix, list):
            items_out = [self.value(sub, f"{path}/{i}", name, depth + 1) for i, sub in enumerate(prefix)]
            return items_out
        if lo_given is None and hi_given is None:
            length = 0 if depth >= _MAX_DEPTH else 3
        else:
            lo = int(lo_given or 0)
            hi = int(hi_given) if hi_given is not None else max(lo, 3) + 2
            if lo_given is None:
                lo = min(1, hi)
            if depth >= _MAX_DEPTH:
                hi = lo
            length = self.rng(path + "#len").randint(lo, max(lo, hi))
        item_schema = s.get("items", {})
        unique = bool(s.get("uniqueItems"))
        out: list[Any] = []
        seen: set[str] = set()
        for i in range(length):
            candidate = self.value(item_schema, f"{path}/{i}", name, depth + 1)
            if unique:
                attempt = 0
                while json.dumps(candidate, sort_keys=True) in seen and attempt < 20:
                    attempt += 1
                    candidate = self.value(item_schema, f"{path}/{i}~{attempt}", name, depth + 1)
                seen.add(json.dumps(candidate, sort_keys=True))
            out.append(candidate)
        return out

    def string(self, s: Mapping[str, Any], path: str, name: str) -> str:
        rng = self.rng(path + "#str")
        fmt = s.get("format")
        label = _label(name)
        if self.ids and _ID_FIELD.search(label) and "maxLength" not in s and "enum" not in s:
            # Refer back to ids the prompt gave (as a model would), in order of appearance.
            text = self.ids[self._next_id % len(self.ids)]
            self._next_id += 1
            return text
        if fmt == "date-time":
            text = f"2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00Z"
        elif fmt == "date":
            text = f"2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
        elif fmt == "time":
            text = f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00"
        elif fmt == "uuid":
            text = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        elif fmt == "email":
            text = f"{label.replace('_', '.')}.{rng.getrandbits(16):04x}@example.com"
        elif fmt in ("uri", "url", "iri"):
            text = f"https://example.com/{label}/{rng.getrandbits(16):04x}"
        elif fmt == "duration":
            text = f"PT{rng.randint(1, 48)}H"
        elif fmt == "ipv4":
            text = f"192.0.2.{rng.randint(1, 254)}"
        else:
            words = [rng.choice(_WORDS) for _ in range(rng.randint(3, 7))]
            text = f"{label}: {' '.join(words)} {rng.choice(_WORDS)}-{rng.getrandbits(16):04x}"
        min_len = int(s.get("minLength", 0) or 0)
        max_len = s.get("maxLength")
        while len(text) < min_len:
            text = f"{text} {rng.choice(_WORDS)}"
        if isinstance(max_len, int) and len(text) > max_len:
            text = text[:max_len].rstrip()
            if len(text) < min_len:
                text = text.ljust(min_len, "x")
        return text

    @staticmethod
    def _bounds(s: Mapping[str, Any], integer: bool) -> tuple[float | None, float | None, bool, bool]:
        lo = s.get("minimum")
        hi = s.get("maximum")
        ex_lo = ex_hi = False
        if isinstance(s.get("exclusiveMinimum"), (int, float)) and not isinstance(s.get("exclusiveMinimum"), bool):
            if lo is None or s["exclusiveMinimum"] >= lo:
                lo, ex_lo = s["exclusiveMinimum"], True
        if isinstance(s.get("exclusiveMaximum"), (int, float)) and not isinstance(s.get("exclusiveMaximum"), bool):
            if hi is None or s["exclusiveMaximum"] <= hi:
                hi, ex_hi = s["exclusiveMaximum"], True
        return lo, hi, ex_lo, ex_hi

    def integer(self, s: Mapping[str, Any], path: str) -> int:
        lo_f, hi_f, ex_lo, ex_hi = self._bounds(s, True)
        lo = None if lo_f is None else (math.floor(lo_f) + 1 if ex_lo else math.ceil(lo_f))
        hi = None if hi_f is None else (math.ceil(hi_f) - 1 if ex_hi else math.floor(hi_f))
        if lo is None and hi is None:
            lo, hi = 0, _NUMERIC_SPAN
        elif lo is None:
            lo = hi - _NUMERIC_SPAN
        elif hi is None:
            hi = lo + _NUMERIC_SPAN
        if hi < lo:
            hi = lo
        rng = self.rng(path + "#int")
        step = s.get("multipleOf")
        if isinstance(step, int) and step > 0:
            k_lo, k_hi = math.ceil(lo / step), math.floor(hi / step)
            if k_lo <= k_hi:
                return rng.randint(k_lo, k_hi) * step
        return rng.randint(lo, hi)

    def number(self, s: Mapping[str, Any], path: str) -> float:
        lo, hi, ex_lo, ex_hi = self._bounds(s, False)
        if lo is None and hi is None:
            lo, hi = 0.0, float(_NUMERIC_SPAN)
        elif lo is None:
            lo = hi - _NUMERIC_SPAN
        elif hi is None:
            hi = lo + _NUMERIC_SPAN
        lo, hi = float(lo), float(hi)
        rng = self.rng(path + "#num")
        step = s.get("multipleOf")
        if isinstance(step, (int, float)) and step > 0:
            k_lo = math.floor(lo / step) + 1 if ex_lo else math.ceil(lo / step)
            k_hi = math.ceil(hi / step) - 1 if ex_hi else math.floor(hi / step)
            if k_lo <= k_hi:
                return float(rng.randint(k_lo, k_hi) * step)
        value = round(rng.uniform(lo, hi), 2)

        def ok(v: float) -> bool:
            return (v > lo if ex_lo else v >= lo) and (v < hi if ex_hi else v <= hi)

        if not ok(value):
            value = (lo + hi) / 2
        return value


def json_for_schema(schema: dict, seed: str, ids: Sequence[str | int] = ()) -> object:
    """A deterministic value valid for a pydantic-v2 style JSON schema.

    Each field draws from its own RNG seeded by ``seed`` and its JSON path, so adding a
    field to a model does not change the values of the others. Fields named like an id
    (``id``, ``lever_id``, ``task_uuid`` ...) take the ``ids`` in turn when given (strings
    for string fields, integers for integer fields): the ids the prompt listed, which a
    real model would copy into its answer (PlanExe checks that answers refer to known ids).
    """
    return _SchemaValueBuilder(schema, seed, ids).value(schema, "#", str(schema.get("title") or "value"), 0)


_ID_FIELD = re.compile(r"(^|_)(id|uuid|ids)$")
_UUID_IN_TEXT = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


_INT_ID_IN_TEXT = re.compile(r"""["'](?:\w+_)?id["']\s*:\s*(\d+)""")


def ids_in(texts: Iterable[str]) -> list[str | int]:
    """Distinct UUIDs in order of first appearance, then an enumeration of integer ids.

    Integer ids (``"id": N`` or ``'id': N``) count only as the run 0..k or 1..k, the way
    a prompt enumerates the items it asks about; stray numbers elsewhere are left out.
    """
    uuids: dict[str, None] = {}
    numbers: set[int] = set()
    for text in texts:
        for match in _UUID_IN_TEXT.findall(text):
            uuids.setdefault(match, None)
        numbers.update(int(n) for n in _INT_ID_IN_TEXT.findall(text))
    start = 0 if 0 in numbers else 1
    run: list[str | int] = []
    while start + len(run) in numbers:
        run.append(start + len(run))
    return [*uuids, *run]


# ---------------------------------------------------------------------------
# Finding the schema that llama-index embeds in prompts
# ---------------------------------------------------------------------------

# llama_index.core.output_parsers.pydantic.PYDANTIC_FORMAT_TMPL; the schema follows it,
# with every brace doubled (format_string(escape_json=True)) and never un-doubled on the
# chat/completion path.
_SCHEMA_MARKERS = ("Here's a JSON schema to follow:", "JSON schema to follow:", "json schema:")
_CANDIDATE_RE = re.compile(r"\{\{?\s*\"(?:\$defs|definitions|properties|type|title|description|required|anyOf)\"")
_SCHEMA_HINT_KEYS = ("properties", "$defs", "definitions", "anyOf", "oneOf", "allOf")
_MAX_CANDIDATES = 200


def _undouble(text: str) -> str:
    return text.replace("{{", "{").replace("}}", "}")


def _decode_at(text: str, pos: int) -> tuple[Any, int] | None:
    """Decode one JSON value at ``pos``, accepting doubled braces; returns (value, end) in ``text``."""
    decoder = json.JSONDecoder()
    try:
        value, end = decoder.raw_decode(text, pos)
        return value, end
    except ValueError:
        pass
    if not text.startswith("{{", pos):
        return None
    # Doubled braces: un-double the tail and decode; map the end back conservatively.
    tail = text[pos:]
    undoubled = _undouble(tail)
    try:
        value, end = decoder.raw_decode(undoubled, 0)
    except ValueError:
        return None
    consumed = undoubled[:end]
    # Each brace in the decoded prefix was doubled in the original.
    original_len = len(consumed) + consumed.count("{") + consumed.count("}")
    return value, pos + original_len


def _looks_like_schema(value: Any) -> bool:
    if not isinstance(value, dict):
        return False
    if isinstance(value.get("properties"), dict) and (
        value.get("type") == "object" or "title" in value or "required" in value
    ):
        return True
    return any(isinstance(value.get(k), (dict, list)) for k in ("$defs", "definitions")) or (
        value.get("type") in ("object", "array") and any(k in value for k in _SCHEMA_HINT_KEYS + ("items",))
    )


def find_schema_in_text(text: str) -> dict | None:
    """The JSON schema a structured-output prompt asks for, or None.

    Looks first right after llama-index's "Here's a JSON schema to follow:" line (the
    schema's braces doubled there), then for any schema-looking JSON object in the text,
    keeping the last outermost one.
    """
    if not text:
        return None
    lowered = text.lower()
    for marker in _SCHEMA_MARKERS:
        idx = lowered.rfind(marker.lower())
        if idx < 0:
            continue
        brace = text.find("{", idx + len(marker))
        if brace < 0:
            continue
        decoded = _decode_at(text, brace)
        if decoded is not None and _looks_like_schema(decoded[0]):
            return decoded[0]
    found: dict | None = None
    pos = 0
    tried = 0
    while tried < _MAX_CANDIDATES:
        match = _CANDIDATE_RE.search(text, pos)
        if match is None:
            break
        tried += 1
        decoded = _decode_at(text, match.start())
        if decoded is not None and _looks_like_schema(decoded[0]):
            found = decoded[0]
            pos = max(decoded[1], match.start() + 1)
        else:
            pos = match.start() + 1
    return found


# ---------------------------------------------------------------------------
# Whole responses
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SimToolCall:
    """One OpenAI-style function call: arguments is a JSON string, as on the wire."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class SimResponse:
    """What the provider answers, independent of transport (in-process or HTTP)."""

    key: str
    text: str | None
    tool_calls: tuple[SimToolCall, ...] = ()
    finish_reason: str = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    kind: str = "text"  # "text" | "json" | "tool"
    schema: dict | None = field(default=None, compare=False, repr=False)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def _count_words(text: str) -> int:
    return len(text.split())


def _tool_function(tool: Mapping[str, Any]) -> Mapping[str, Any]:
    fn = tool.get("function")
    return fn if isinstance(fn, Mapping) else tool


def _choose_tool(tools: Sequence[Mapping[str, Any]], tool_choice: Any) -> Mapping[str, Any] | None:
    if tool_choice == "none":
        return None
    wanted: str | None = None
    if isinstance(tool_choice, Mapping):
        fn = tool_choice.get("function")
        wanted = fn.get("name") if isinstance(fn, Mapping) else tool_choice.get("name")
    elif isinstance(tool_choice, str) and tool_choice not in ("auto", "required", "any"):
        wanted = tool_choice
    functions = [_tool_function(t) for t in tools]
    if wanted is not None:
        for fn in functions:
            if fn.get("name") == wanted:
                return fn
        logger.debug("tool_choice %r names no offered tool; using the first", wanted)
    return functions[0] if functions else None


def _plain_text(key: str, model: str) -> str:
    rng = _rng(key, "text")
    sentences = []
    for _ in range(rng.randint(2, 4)):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(6, 12))]
        sentences.append(" ".join(words).capitalize() + ".")
    return f"[{model}:{key[:8]}] " + " ".join(sentences)


def _schema_search_order(msgs: list[dict[str, Any]]) -> list[str]:
    """Last message first (llama-index puts the schema there without a system prompt), then the system prompt, then the rest."""
    texts = [message_text(m.get("content")) for m in msgs]
    order: list[int] = []
    if msgs:
        order.append(len(msgs) - 1)
    order += [i for i, m in enumerate(msgs) if m.get("role") in ("system", "developer") and i not in order]
    order += [i for i in range(len(msgs) - 1, -1, -1) if i not in order]
    return [texts[i] for i in order]


def respond(
    messages: list[dict],
    tools: list | None = None,
    model: str = "simulated",
    *,
    tool_choice: Any = None,
) -> SimResponse:
    """The simulated answer to one request: a tool call, a schema-valid JSON text, or prose."""
    msgs = [_as_message_dict(m) for m in messages]
    key = request_key(msgs, tools, model)
    prompt_tokens = sum(_count_words(message_text(m.get("content"))) for m in msgs)
    if tools:
        prompt_tokens += _count_words(json.dumps(tools, default=str))
    last_role = msgs[-1].get("role") if msgs else None
    prompt_ids = ids_in(message_text(m.get("content")) for m in msgs)

    if tools and last_role != "tool":
        fn = _choose_tool(tools, tool_choice)
        if fn is not None:
            name = str(fn.get("name", "function"))
            params = fn.get("parameters") or {"type": "object", "properties": {}}
            args = json_for_schema(params, f"{key}|tool|{name}", prompt_ids)
            arguments = json.dumps(args, ensure_ascii=False, separators=(", ", ": "))
            call_id = "call_" + hashlib.sha256(f"{key}|{name}".encode()).hexdigest()[:24]
            return SimResponse(
                key=key,
                text=None,
                tool_calls=(SimToolCall(id=call_id, name=name, arguments=arguments),),
                finish_reason="tool_calls",
                prompt_tokens=prompt_tokens,
                completion_tokens=_count_words(arguments),
                kind="tool",
                schema=params,
            )

    for text in _schema_search_order(msgs):
        schema = find_schema_in_text(text)
        if schema is not None:
            value = json_for_schema(schema, f"{key}|json", prompt_ids)
            body = json.dumps(value, ensure_ascii=False, indent=2)
            return SimResponse(
                key=key,
                text=body,
                prompt_tokens=prompt_tokens,
                completion_tokens=_count_words(body),
                kind="json",
                schema=schema,
            )

    body = _plain_text(key, model)
    return SimResponse(key=key, text=body, prompt_tokens=prompt_tokens, completion_tokens=_count_words(body))


# ---------------------------------------------------------------------------
# Latency
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LatencyModel:
    """Per-request latency, deterministic per request key: the same request always takes as long.

    ``fixed``: always ``mean``. ``uniform``: in ``[mean - spread, mean + spread]``.
    ``lognormal``: lognormal with arithmetic mean ``mean`` and log-space sigma ``spread``.
    """

    kind: str = "fixed"
    mean: float = 0.0
    spread: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("fixed", "uniform", "lognormal"):
            raise ValueError(f"unknown latency kind {self.kind!r}; use fixed, uniform or lognormal")
        if self.mean < 0 or self.spread < 0:
            raise ValueError("latency mean and spread must be >= 0")

    def sample(self, key: str) -> float:
        """Seconds to wait for the request with this key."""
        if self.kind == "fixed" or self.mean == 0:
            return float(self.mean)
        rng = _rng("latency", self.seed, key)
        if self.kind == "uniform":
            return max(0.0, rng.uniform(self.mean - self.spread, self.mean + self.spread))
        mu = math.log(self.mean) - self.spread**2 / 2
        return max(0.0, rng.lognormvariate(mu, self.spread))

    @classmethod
    def parse(cls, spec: "str | float | int | LatencyModel | None", seed: int = 0) -> "LatencyModel":
        """``"0.3"`` (fixed), ``"fixed:0.3"``, ``"uniform:LOW:HIGH"``, ``"lognormal:MEAN:SIGMA"``."""
        if isinstance(spec, LatencyModel):
            return spec
        if spec is None:
            return cls("fixed", 0.0, seed=seed)
        if isinstance(spec, (int, float)) and not isinstance(spec, bool):
            return cls("fixed", float(spec), seed=seed)
        text = str(spec).strip()
        parts = text.split(":")
        try:
            if len(parts) == 1:
                return cls("fixed", float(parts[0]), seed=seed)
            kind = parts[0].lower()
            nums = [float(p) for p in parts[1:]]
        except ValueError as exc:
            raise ValueError(f"bad latency spec {spec!r}") from exc
        if kind == "fixed" and len(nums) == 1:
            return cls("fixed", nums[0], seed=seed)
        if kind == "uniform" and len(nums) == 2:
            low, high = sorted(nums)
            return cls("uniform", (low + high) / 2, (high - low) / 2, seed=seed)
        if kind == "lognormal" and len(nums) in (1, 2):
            return cls("lognormal", nums[0], nums[1] if len(nums) == 2 else 0.5, seed=seed)
        raise ValueError(f"bad latency spec {spec!r}; use 0.3, uniform:0.1:0.5 or lognormal:0.3:0.5")
