"""Drop-in for PlanExe's entry point, for users who will not patch their checkout.

    PLANEXE_CONCURRENCY=1 PLANEXE_WORKERS=4 RUN_ID_DIR=/abs/run/dir \\
        python -m pipeline_patches.run_plan_pipeline

Same environment variables as ``python -m worker_plan_internal.plan.run_plan_pipeline``
(RUN_ID_DIR, SPEED_VS_DETAIL, LLM_MODEL, ...). With the flag off it is exactly PlanExe's
entry point; with it on, PlanExe's single ``luigi.build`` call becomes
:func:`pipeline_patches.flag_toggle.concurrent_build`.
"""
from __future__ import annotations

import runpy

import luigi

from .flag_toggle import concurrent_build, flag_on, workers_from_env
from .planexe import locate_planexe


def main() -> None:
    if flag_on():
        workers_from_env()  # refuse a bad PLANEXE_WORKERS before anything runs
    # Not imported here: it must run once, as __main__, or its task classes would exist twice.
    _, module_name = locate_planexe()
    if flag_on():
        luigi.build = concurrent_build
    runpy.run_module(module_name, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
