"""Apply or revert the flag-toggle hook on a PlanExe checkout (``planexe-concurrency patch PATH``).

The hook (``planexe_hook.txt``, six lines of our own) goes just before the pipeline module's
``if __name__ == '__main__':`` line; nothing of PlanExe's text is changed or needed beyond
that anchor, so the same patch fits every PlanExe version that has the entry point. With
``PLANEXE_CONCURRENCY`` unset the hook imports nothing and PlanExe behaves as before.
"""
from __future__ import annotations

import re
from pathlib import Path

from planexe_concurrency.resume import atomic_write_text

HOOK = (Path(__file__).with_name("planexe_hook.txt")).read_text(encoding="utf-8")
BEGIN = HOOK.splitlines()[0]
END = HOOK.splitlines()[-1]
ANCHOR = re.compile(r"""^if __name__ == (['"])__main__\1:\s*$""", re.MULTILINE)

CANDIDATES = (
    "worker_plan/worker_plan_internal/plan/run_plan_pipeline.py",
    "worker_plan_internal/plan/run_plan_pipeline.py",
    "planexe/plan/run_plan_pipeline.py",
    "plan/run_plan_pipeline.py",
)


class PatchError(RuntimeError):
    """The checkout cannot be patched (or reverted) as asked; nothing was written."""


def find_pipeline_file(path: str | Path) -> Path:
    """``path`` is the pipeline file itself or a folder of a PlanExe checkout."""
    p = Path(path)
    if p.is_file():
        return p
    if not p.is_dir():
        raise PatchError(f"{p} does not exist")
    for candidate in CANDIDATES:
        if (p / candidate).is_file():
            return p / candidate
    raise PatchError(f"no run_plan_pipeline.py under {p}; looked for: {', '.join(CANDIDATES)}")


def is_patched(text: str) -> bool:
    return BEGIN in text


def apply(path: str | Path) -> tuple[Path, bool]:
    """Insert the hook; returns (file, changed). Applying twice changes nothing."""
    target = find_pipeline_file(path)
    text = target.read_text(encoding="utf-8")
    if is_patched(text):
        return target, False
    anchors = list(ANCHOR.finditer(text))
    if len(anchors) != 1:
        raise PatchError(
            f"{target}: expected exactly one top-level \"if __name__ == '__main__':\" line, found {len(anchors)}"
        )
    at = anchors[0].start()
    atomic_write_text(target, text[:at] + HOOK + "\n" + text[at:])
    return target, True


def revert(path: str | Path) -> tuple[Path, bool]:
    """Remove the hook exactly as it was inserted; returns (file, changed)."""
    target = find_pipeline_file(path)
    text = target.read_text(encoding="utf-8")
    if not is_patched(text):
        return target, False
    block = HOOK + "\n"
    if text.count(block) != 1:
        raise PatchError(f"{target}: the hook was edited by hand; remove the lines between '{BEGIN}' and '{END}' yourself")
    atomic_write_text(target, text.replace(block, "", 1))
    return target, True
