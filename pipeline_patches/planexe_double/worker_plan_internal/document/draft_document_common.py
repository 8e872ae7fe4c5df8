"""What drafting a document to find and a document to create share: one structured call per document.

The pipeline's loop calls ``execute(llm=, user_prompt=, identify_purpose_dict=)`` once per
document and merges ``.response`` into the document; the raw per-item file is ``to_dict()``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, ClassVar, Optional

from llama_index.core.llms.llm import LLM
from pydantic import BaseModel

from worker_plan_internal.llm_util.structured_step import PromptedResponse, llm_metadata, structured_chat, system_user
from worker_plan_internal.plan.simple_steps import IdentifyPurpose, purpose_of

_PURPOSE_HINT = {
    "business": "Keep a business reader in mind.",
    "personal": "Keep a private person in mind.",
    "other": "Keep the plan's own field in mind.",
}


@dataclass
class DraftDocumentBase(PromptedResponse):
    system_prompt: str
    user_prompt: str
    response: dict[str, Any]
    metadata: dict[str, Any]

    RESPONSE_MODEL: ClassVar[type[BaseModel]]
    TASK: ClassVar[str]

    @classmethod
    def execute(cls, llm: LLM, user_prompt: str, identify_purpose_dict: Optional[dict[str, Any]]) -> "DraftDocumentBase":
        if not isinstance(llm, LLM):
            raise ValueError("Invalid LLM instance.")
        if not isinstance(user_prompt, str):
            raise ValueError("Invalid user_prompt.")
        if identify_purpose_dict is not None and not isinstance(identify_purpose_dict, dict):
            raise ValueError("Invalid identify_purpose_dict.")
        if identify_purpose_dict is None:
            # Like PlanExe: without a purpose, find it out first (an extra call).
            identify_purpose_dict = IdentifyPurpose.execute(llm, user_prompt).to_dict()
        system_prompt = f"{cls.TASK} {_PURPOSE_HINT[purpose_of(identify_purpose_dict)]}"
        chat_response = structured_chat(llm, cls.RESPONSE_MODEL, system_user(system_prompt, user_prompt))
        response = json.loads(chat_response.message.content)
        return cls(system_prompt=system_prompt, user_prompt=user_prompt, response=response, metadata=llm_metadata(llm))

