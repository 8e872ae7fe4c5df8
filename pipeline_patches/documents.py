"""DraftDocumentsToFindTask and DraftDocumentsToCreateTask: one independent call per document."""
from __future__ import annotations

import json
from typing import Any

from planexe_concurrency.resume import json_text

from .base import ConcurrentTask, Item
from .planexe import load_planexe

pe = load_planexe()
P = pe.pipeline

class _DraftDocuments(ConcurrentTask):
    """The shared loop; the two subclasses name their input, files, class and messages."""

    input_key: str
    draft_class_name: str
    raw_template_name: str
    message_noun: str

    def run_inner(self) -> None:
        inputs = self.input()  # type: ignore[attr-defined]
        with inputs["identify_purpose"]["raw"].open("r") as f:
            identify_purpose_dict = json.load(f)
        with inputs["strategic_decisions_markdown"]["markdown"].open("r") as f:
            strategic_decisions_markdown = f.read()
        with inputs["scenarios_markdown"]["markdown"].open("r") as f:
            scenarios_markdown = f.read()
        with inputs["consolidate_assumptions_markdown"]["short"].open("r") as f:
            assumptions_markdown = f.read()
        with inputs["project_plan"]["markdown"].open("r") as f:
            project_plan_markdown = f.read()
        with inputs[self.input_key]["clean"].open("r") as f:
            documents = json.load(f)

        accumulated = documents.copy()
        if self.speedvsdetail == pe.SpeedVsDetailEnum.FAST_BUT_SKIP_DETAILS:  # type: ignore[attr-defined]
            documents = documents[:2]

        draft_class = getattr(P, self.draft_class_name)
        template = getattr(pe.FilenameEnum, self.raw_template_name).value

        def item(index: int, document: Any) -> Item:
            # The same query PlanExe builds for this document.
            query = (
                f"File 'strategic_decisions.md':\n{strategic_decisions_markdown}\n\n"
                f"File 'scenarios.md':\n{scenarios_markdown}\n\n"
                f"File 'assumptions.md':\n{assumptions_markdown}\n\n"
                f"File 'project-plan.md':\n{project_plan_markdown}\n\n"
                f"File 'document.json':\n{document}"
            )

            def call(llm: Any) -> dict[str, Any]:
                draft = draft_class.execute(llm=llm, user_prompt=query, identify_purpose_dict=identify_purpose_dict)
                return {"raw": draft.to_dict(), "response": draft.response}

            return Item(
                label=f"document {index + 1}",
                call=call,
                fingerprint=query,
                raw_file=template.format(index + 1),
            )

        records = self.run_items(
            [item(i, d) for i, d in enumerate(documents)],
            failure_message=lambda i: f"{self.message_noun} {i + 1} LLM interaction failed.",
        )
        for index, (document, record) in enumerate(zip(documents, records)):
            updated = document.copy()
            for key, value in record["response"].items():
                updated[key] = value
            accumulated[index] = updated
        self.write_output(self.output().path, json_text(accumulated))  # type: ignore[attr-defined]


class DraftDocumentsToFindTask(_DraftDocuments, P.DraftDocumentsToFindTask):
    input_key = "filter_documents_to_find"
    draft_class_name = "DraftDocumentToFind"
    raw_template_name = "DRAFT_DOCUMENTS_TO_FIND_RAW_TEMPLATE"
    message_noun = "Document-to-find"


class DraftDocumentsToCreateTask(_DraftDocuments, P.DraftDocumentsToCreateTask):
    input_key = "filter_documents_to_create"
    draft_class_name = "DraftDocumentToCreate"
    raw_template_name = "DRAFT_DOCUMENTS_TO_CREATE_RAW_TEMPLATE"
    message_noun = "Document-to-create"
