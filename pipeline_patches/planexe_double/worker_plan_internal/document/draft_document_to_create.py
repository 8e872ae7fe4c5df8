"""Outline a document the project must write itself (one call per document)."""
from __future__ import annotations

from pydantic import BaseModel, Field

from worker_plan_internal.document.draft_document_common import DraftDocumentBase


class DocumentToCreateDraft(BaseModel):
    sections: list[str] = Field(min_length=2, max_length=4)
    decisions_it_enables: str
    approver: str


class DraftDocumentToCreate(DraftDocumentBase):
    RESPONSE_MODEL = DocumentToCreateDraft
    TASK = "Outline the document named in 'document.json': its sections, what it lets the project decide, who signs it off."
