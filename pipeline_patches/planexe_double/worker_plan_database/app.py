"""Stand-in for PlanExe's multi-user database worker (``python -m worker_plan_database.app``).

Written from scratch for the tests; it keeps what matters to the plugin in PlanExe's worker:

* the database connection is opened at import, in the process that later calls
  ``luigi.build`` (SQLAlchemy + psycopg2, a pooled engine and one session);
* it claims one pending row at a time (``FOR UPDATE SKIP LOCKED``), writes the start-time
  and plan files, and runs the pipeline in-process through a subclass of ``ExecutePipeline``
  whose ``_handle_task_completion`` writes progress and a heartbeat through that session
  after every LLM attempt, and raises ``PipelineStopRequested`` when the user's browser
  has not been seen for ``BROWSER_INACTIVE_AFTER_SECONDS`` (the row's ``last_seen``);
* then it stores the report and a zip of the whole run directory in the row.

Settings (environment): ``PLANEXE_DOUBLE_DATABASE_URL`` (a SQLAlchemy URL), ``PLANEXE_RUN_DIR``
(where run directories are made), ``PLANEXE_DOUBLE_START_TIME_JSON`` (a fixed start-time file, so
that two runs ask the same questions), ``PLANEXE_DOUBLE_WORKER_EXIT_WHEN_IDLE`` (seconds without a
pending row after which the worker exits; default: never), ``LLM_MODEL``.
"""
from __future__ import annotations

import io
import logging
import os
import sys
import time
import zipfile
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

from worker_plan_api.filenames import ExtraFilenameEnum, FilenameEnum
from worker_plan_api.speedvsdetail import SpeedVsDetailEnum
from worker_plan_api.start_time import StartTime
from worker_plan_internal.llm_util.llm_executor import PipelineStopRequested
from worker_plan_internal.plan.run_plan_pipeline import ExecutePipeline, HandleTaskCompletionParameters

logger = logging.getLogger("worker_plan_database")

# PlanExe's llm_factory imports its llama-index LLM classes at module level, so its worker pays
# for them at boot, before it claims a request; the double's factory imports them lazily.
try:
    import llama_index.llms.openai_like  # noqa: F401
except ImportError:  # the double without the optional HTTP client: only the in-process models
    pass

BROWSER_INACTIVE_AFTER_SECONDS = 80
WORKER_ID = os.environ.get("PLANEXE_WORKER_ID") or f"worker-{os.getpid()}"

SCHEMA = """
CREATE TABLE IF NOT EXISTS plan_request (
    id TEXT PRIMARY KEY,
    prompt TEXT NOT NULL,
    fast BOOLEAN NOT NULL DEFAULT TRUE,
    state TEXT NOT NULL DEFAULT 'pending',
    claimed_by TEXT,
    claim_count INTEGER NOT NULL DEFAULT 0,
    progress_percentage DOUBLE PRECISION NOT NULL DEFAULT 0,
    progress_message TEXT,
    last_seen TIMESTAMPTZ NOT NULL DEFAULT now(),
    report_html TEXT,
    run_zip BYTEA,
    created TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);
CREATE TABLE IF NOT EXISTS worker_heartbeat (
    worker_id TEXT PRIMARY KEY,
    current_request TEXT,
    beat TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS callback_call (
    seq BIGSERIAL PRIMARY KEY,
    request_id TEXT NOT NULL,
    task TEXT NOT NULL,
    pid INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);
"""

# Opened at import, as PlanExe's worker does: the parent's connection, used by the callback.
engine = create_engine(os.environ["PLANEXE_DOUBLE_DATABASE_URL"], pool_pre_ping=True, pool_recycle=280)
session = Session(engine)


class ServerExecutePipeline(ExecutePipeline):
    """PlanExe's pipeline with progress, heartbeat and a stop check in the database."""

    def __init__(self, request_id: str, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.request_id = request_id

    def _handle_task_completion(self, parameters: HandleTaskCompletionParameters) -> None:
        now = datetime.now(timezone.utc)
        session.execute(
            text(
                "INSERT INTO worker_heartbeat (worker_id, current_request, beat) VALUES (:w, :r, :t)"
                " ON CONFLICT (worker_id) DO UPDATE SET current_request = :r, beat = :t"
            ),
            {"w": WORKER_ID, "r": self.request_id, "t": now},
        )
        session.commit()
        last_seen = session.execute(text("SELECT last_seen FROM plan_request WHERE id = :r"), {"r": self.request_id}).scalar_one()
        inactive = (now - last_seen).total_seconds() > BROWSER_INACTIVE_AFTER_SECONDS
        self._log_call(parameters, "stop" if inactive else "continue")
        if inactive:
            session.commit()
            raise PipelineStopRequested(f"request {self.request_id}: the browser has been inactive for too long")
        session.execute(
            text("UPDATE plan_request SET progress_percentage = :p, progress_message = :m WHERE id = :r"),
            {"p": parameters.progress.progress_percentage, "m": parameters.progress.progress_message, "r": self.request_id},
        )
        session.commit()

    def _log_call(self, parameters: HandleTaskCompletionParameters, outcome: str) -> None:
        session.execute(
            text("INSERT INTO callback_call (request_id, task, pid, outcome) VALUES (:r, :t, :p, :o)"),
            {"r": self.request_id, "t": type(parameters.task).__name__, "p": os.getpid(), "o": outcome},
        )


def create_schema() -> None:
    with engine.begin() as conn:
        conn.execute(text(SCHEMA))


def claim() -> tuple[str, str, bool] | None:
    """One pending row, marked as ours in one transaction (other workers skip the locked row)."""
    with engine.begin() as conn:
        row = conn.execute(
            text(
                "SELECT id, prompt, fast FROM plan_request WHERE state = 'pending'"
                " ORDER BY created LIMIT 1 FOR UPDATE SKIP LOCKED"
            )
        ).first()
        if row is None:
            return None
        conn.execute(
            text("UPDATE plan_request SET state = 'processing', claimed_by = :w, claim_count = claim_count + 1 WHERE id = :r"),
            {"w": WORKER_ID, "r": row.id},
        )
        return row.id, row.prompt, row.fast


def zip_of(run_dir: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(run_dir.rglob("*")):
            if path.is_file() and path.name != ExtraFilenameEnum.LOG_TXT.value:
                archive.write(path, path.relative_to(run_dir))
    return buffer.getvalue()


def process(request_id: str, prompt: str, fast: bool, base: Path) -> None:
    run_dir = base / request_id
    run_dir.mkdir(parents=True, exist_ok=True)
    start_path = run_dir / FilenameEnum.START_TIME.value
    fixed = os.environ.get("PLANEXE_DOUBLE_START_TIME_JSON")
    if fixed:
        start_path.write_text(fixed)
    else:
        StartTime.create(datetime.now().astimezone()).save(str(start_path))
    (run_dir / FilenameEnum.INITIAL_PLAN.value).write_text(f"Plan:\n{prompt}")
    speed = SpeedVsDetailEnum.FAST_BUT_SKIP_DETAILS if fast else SpeedVsDetailEnum.ALL_DETAILS_BUT_SLOW
    pipeline = ServerExecutePipeline(
        request_id, run_id_dir=run_dir, speedvsdetail=speed, llm_models=ExecutePipeline.resolve_llm_models(os.environ.get("LLM_MODEL"))
    )
    pipeline.setup()
    pipeline.run()
    report = run_dir / FilenameEnum.REPORT.value
    state = "completed" if pipeline.has_report_file else ("stopped" if pipeline.has_stop_flag_file else "failed")
    session.execute(
        text("UPDATE plan_request SET state = :s, report_html = :h, run_zip = :z WHERE id = :r"),
        {"s": state, "h": report.read_text() if report.exists() else None, "z": zip_of(run_dir), "r": request_id},
    )
    session.commit()
    logger.info("request %s: %s", request_id, state)


def main() -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(asctime)s %(process)d %(name)s %(levelname)s: %(message)s")
    base = Path(os.environ.get("PLANEXE_RUN_DIR", "run")).resolve()
    idle_limit = float(os.environ.get("PLANEXE_DOUBLE_WORKER_EXIT_WHEN_IDLE", "inf"))
    create_schema()
    idle_since = time.monotonic()
    while time.monotonic() - idle_since < idle_limit:
        claimed = claim()
        if claimed is None:
            time.sleep(0.2)
            continue
        try:
            process(*claimed, base)
        except Exception:
            logger.exception("request %s failed", claimed[0])
            session.rollback()
            session.execute(text("UPDATE plan_request SET state = 'failed' WHERE id = :r"), {"r": claimed[0]})
            session.commit()
        idle_since = time.monotonic()
    return 0


if __name__ == "__main__":
    sys.exit(main())
