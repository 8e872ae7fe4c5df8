"""The environment variables the pipeline's entry point reads (RUN_ID_DIR, LLM_MODEL, SPEED_VS_DETAIL)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Optional


class PipelineEnvironmentEnum(Enum):
    RUN_ID_DIR = "RUN_ID_DIR"
    LLM_MODEL = "LLM_MODEL"
    SPEED_VS_DETAIL = "SPEED_VS_DETAIL"


@dataclass
class PipelineEnvironment:
    run_id_dir: Optional[str] = None
    llm_model: Optional[str] = None
    speed_vs_detail: Optional[str] = None

    @classmethod
    def from_env(cls) -> "PipelineEnvironment":
        return cls(
            run_id_dir=os.environ.get(PipelineEnvironmentEnum.RUN_ID_DIR.value),
            llm_model=os.environ.get(PipelineEnvironmentEnum.LLM_MODEL.value),
            speed_vs_detail=os.environ.get(PipelineEnvironmentEnum.SPEED_VS_DETAIL.value),
        )

    def get_run_id_dir(self) -> Path:
        """The run directory: must be set, absolute and an existing directory (else ValueError)."""
        if self.run_id_dir is None:
            raise ValueError("RUN_ID_DIR is not set")
        path = Path(self.run_id_dir)
        if not path.is_absolute():
            raise ValueError(f"RUN_ID_DIR must be an absolute path, got {self.run_id_dir!r}")
        if not path.is_dir():
            raise ValueError(f"RUN_ID_DIR must be a directory, got {self.run_id_dir!r}")
        return path
