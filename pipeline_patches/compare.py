"""Compare two PlanExe run directories file by file.

Our test double is deterministic, so its runs must agree byte for byte. A real PlanExe is
not, even run twice sequentially with the same start time: it draws ``uuid4`` ids, writes
each call's wall-clock ``duration`` into its raw files' metadata, and stamps the report
with the time it was generated. ``lenient=True`` compares on that footing: UUIDs renamed
in order of first appearance per file, ``"duration": N`` values (with the
``duration_total/average/max/min`` that ReviewPlan sums them into, and the ``duration1`` and
``duration2`` of QuestionsAndAnswers' two chained requests) and the report's "Generated on"
stamp blanked. Nothing else is forgiven.
"""
from __future__ import annotations

import re
from pathlib import Path

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_DURATION = re.compile(r'("duration(?:\d|_total|_average|_max|_min)?":\s*)\d+(\.\d+)?')
_GENERATED_ON = re.compile(r"Generated on: [0-9: -]+")

# What PlanExe's database worker writes beside the plan (its log, its activity trace, the
# expected-file list it builds per request): may differ between two runs of the same plan.
WORKER_EXTRAS = frozenset({"expected_filenames1.json", "log.txt", "track_activity.jsonl"})


def normalize(text: str) -> str:
    names: dict[str, str] = {}
    text = _UUID.sub(lambda m: names.setdefault(m.group(0), f"uuid-{len(names) + 1}"), text)
    text = _DURATION.sub(r"\g<1>0", text)
    return _GENERATED_ON.sub("Generated on: <time>", text)


# What atomic_write_bytes leaves behind when the process dies between write and rename:
# never read by anyone, so not part of the plan.
_UNFINISHED_WRITE = re.compile(r"^\..+\.tmp$")


def plan_files(run_dir: Path) -> dict[str, bytes]:
    """Every file of the run except unfinished temporary files (our own folder lies beside the run, not in it)."""
    return {
        str(p.relative_to(run_dir)): p.read_bytes()
        for p in sorted(run_dir.rglob("*"))
        if p.is_file() and not _UNFINISHED_WRITE.match(p.name)
    }


def differing_files(a: Path, b: Path, *, lenient: bool = False) -> list[str]:
    """Names of files that are missing on one side or differ (see the module docstring for ``lenient``)."""
    fa, fb = plan_files(a), plan_files(b)
    out = []
    for name in sorted(set(fa) | set(fb)):
        x, y = fa.get(name), fb.get(name)
        if x == y:
            continue
        if lenient and x is not None and y is not None:
            if normalize(x.decode("utf-8", "replace")) == normalize(y.decode("utf-8", "replace")):
                continue
        out.append(name)
    return out
