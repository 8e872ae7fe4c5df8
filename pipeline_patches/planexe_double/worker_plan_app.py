"""Stand-in for PlanExe's ``worker_plan/app.py``: a service that runs each plan as a subprocess.

PlanExe's FastAPI service starts ``python -m worker_plan_internal.plan.run_plan_pipeline``
with a copy of its own environment plus RUN_ID_DIR, LLM_MODEL and SPEED_VS_DETAIL. This
does the same for one run directory (no web server: the launch is what matters here).

    python -m worker_plan_app RUN_DIR [LLM_MODEL] [SPEED_VS_DETAIL]
"""
from __future__ import annotations

import os
import subprocess
import sys

PIPELINE_MODULE = "worker_plan_internal.plan.run_plan_pipeline"


def start_pipeline(run_dir: str, llm_model: str, speed_vs_detail: str) -> subprocess.Popen[bytes]:
    env = os.environ.copy()
    env.update(RUN_ID_DIR=run_dir, LLM_MODEL=llm_model, SPEED_VS_DETAIL=speed_vs_detail)
    return subprocess.Popen([sys.executable, "-m", PIPELINE_MODULE], env=env)


def main(argv: list[str]) -> int:
    run_dir, llm_model, speed = (argv + ["simulated", "fast_but_skip_details"][len(argv) - 1 :])[:3]
    return start_pipeline(run_dir, llm_model, speed).wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
