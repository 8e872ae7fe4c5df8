"""ConsolidateAssumptionsMarkdownTask: eight independent "shorten this markdown" calls.

PlanExe carries on past a failed call (that chunk becomes a problem note), so this loop
always runs every item, whatever ``failure_mode`` says.
"""
from __future__ import annotations

import logging
from typing import Any

from .base import ConcurrentTask, Item
from .planexe import load_planexe

pe = load_planexe()
P = pe.pipeline
logger = logging.getLogger("planexe_concurrency")

# (title, requires() key) in PlanExe's order; the titles appear in the output.
SECTIONS = (
    ("Purpose", "identify_purpose"),
    ("Plan Type", "plan_type"),
    ("Physical Locations", "physical_locations"),
    ("Currency Strategy", "currency_strategy"),
    ("Identify Risks", "identify_risks"),
    ("Make Assumptions", "make_assumptions"),
    ("Distill Assumptions", "distill_assumptions"),
    ("Review Assumptions", "review_assumptions"),
)


def _problem(title: str, what: str) -> str:
    return f"**Problem with document:** '{title}'\n\n{what}"


class ConsolidateAssumptionsMarkdownTask(ConcurrentTask, P.ConsolidateAssumptionsMarkdownTask):
    def run_inner(self) -> None:
        inputs = self.input()
        full_chunks: list[str] = []
        # One slot per section, in order; a str is final, an int points at an LLM item.
        short_slots: list[str | int] = []
        items: list[Item] = []
        titles: list[str] = []
        for title, key in SECTIONS:
            path = inputs[key]["markdown"].path
            try:
                with open(path, "r", encoding="utf-8") as f:
                    markdown_chunk = f.read()
            except FileNotFoundError:
                logger.warning("task=%s section=%r markdown file not found: %s", self.task_family, title, path)
                full_chunks.append(_problem(title, "File not found."))
                short_slots.append(_problem(title, "File not found."))
                continue
            except Exception as exc:
                logger.error("task=%s section=%r error reading %s: %s", self.task_family, title, path, exc)
                full_chunks.append(_problem(title, "Error reading markdown file."))
                short_slots.append(_problem(title, "Error reading markdown file."))
                continue
            full_chunks.append(f"# {title}\n\n{markdown_chunk}")
            short_slots.append(len(items))
            titles.append(title)
            items.append(
                Item(
                    label=title,
                    call=lambda llm, chunk=markdown_chunk: {"markdown": P.ShortenMarkdown.execute(llm, chunk).markdown},
                    fingerprint=markdown_chunk,
                )
            )

        records = self.run_items(items, failure_message=lambda i: f"Shorten {titles[i]} failed.", tolerate_failures=True)
        short_chunks = []
        for slot in short_slots:
            if isinstance(slot, str):
                short_chunks.append(slot)
            elif records[slot] is None:
                short_chunks.append(_problem(titles[slot], "Error shortening markdown file."))
            else:
                short_chunks.append(f"# {titles[slot]}\n{records[slot]['markdown']}")

        self.write_output(self.output()["full"].path, "\n\n".join(full_chunks))
        self.write_output(self.output()["short"].path, "\n\n".join(short_chunks))
