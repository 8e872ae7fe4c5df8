"""Outline what an existing document the project must find should contain (one call per document)."""
from __future__ import annotations

from pydantic import BaseModel, Field

from worker_plan_internal.document.draft_document_common import DraftDocumentBase


class DocumentToFindDraft(BaseModel):
    essential_information: list[str] = Field(min_length=2, max_length=4)
    risk_if_poor_quality: str
    fallback: str = Field(description="What to do if the document cannot be found.")


class DraftDocumentToFind(DraftDocumentBase):
    RESPONSE_MODEL = DocumentToFindDraft
    TASK = "Outline what the document named in 'document.json' must tell the project, and what to do if it is missing."
