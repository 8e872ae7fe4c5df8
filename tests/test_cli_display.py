"""What a person sees, end to end: the CLI under a pseudo-terminal, piped, followed by ``status``."""
from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import pytest

from planexe_concurrency.events import ItemState, read_events
from planexe_concurrency.simllm import SimServer
from pipeline_patches.rundir import state_dir_for

pytestmark = pytest.mark.slow

CLI = [sys.executable, "-m", "pipeline_patches.cli"]
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # anything but \t and \n


def _run_words(run_dir: Path, *extra: str, latency: str = "0.02") -> list[str]:
    return [*CLI, "run", "--run-dir", str(run_dir), "--latency", latency, "--workers", "4", *extra]


def _on_a_terminal(words: list[str], env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run ``words`` under a pseudo-terminal; its exit status and everything it drew."""
    env = {**(os.environ if env is None else env), "COLUMNS": "120", "LINES": "40"}
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the child execs
        os.execve(words[0], words, env)
    screen = b""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 5)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        screen += chunk
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), screen.decode("utf-8", errors="replace")


def test_a_terminal_gets_the_live_display_and_then_the_summary(tmp_path: Path) -> None:
    code, text = _on_a_terminal(_run_words(tmp_path / "tty"))
    assert code == 0
    assert "\x1b[" in text  # drawn in place
    frames = [m.start() for m in re.finditer(r"LLM calls: \d+ answered · \d+ in flight · \d+ retried · \d+ failed", text)]
    assert len(frames) >= 3  # redrawn as the run goes
    assert re.search(r"\d+/63 tasks", text) and "elapsed" in text and "▸ " in text
    summary = text.index("planexe-concurrency: done in")
    assert summary > frames[-1]  # the summary comes after the last frame
    tail = text[summary:].replace("\r", "")
    assert "speed-up" in tail and "longest tasks:" in tail and "timeline:" in tail


def test_planexes_own_entry_point_with_the_flag_draws_the_same_display(tmp_path: Path) -> None:
    from tests.conftest import write_start_files

    run_dir = write_start_files(tmp_path / "flag")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLANEXE_", "LUIGI_"))}
    env.update(
        PLANEXE_CONCURRENCY="1", PLANEXE_WORKERS="4", PLANEXE_CONCURRENCY_TARGET="double", RUN_ID_DIR=str(run_dir),
        LLM_MODEL="simulated", SPEED_VS_DETAIL="fast_but_skip_details",
    )
    code, text = _on_a_terminal([sys.executable, "-m", "pipeline_patches.run_plan_pipeline"], env)
    assert code == 0, text[-2000:]
    assert len(re.findall(r"LLM calls: \d+ answered", text)) >= 3 and re.search(r"\d+/\d+ tasks", text)
    assert text.index("planexe-concurrency: done in") > text.rindex("LLM calls:")
    # PlanExe's own INFO lines went to its log.txt while the display drew, not through it
    assert "Done scheduling tasks" not in text and (run_dir / "log.txt").read_text().count("Done scheduling tasks") == 1


def test_piped_output_is_plain_and_short_every_luigi_line_is_logged_once_and_status_follows(tmp_path: Path) -> None:
    """One 4-worker run, piped, and ``status`` following it from another process."""
    run_dir = tmp_path / "piped"
    missing = subprocess.run([*CLI, "status", str(run_dir)], capture_output=True, text=True)
    assert missing.returncode == 2 and "no run of planexe-concurrency found" in missing.stderr
    proc = subprocess.Popen(
        _run_words(run_dir, "--progress-interval", "1", latency="0.05"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    timed: list[tuple[float, str]] = []

    def read(stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            timed.append((time.monotonic(), line.rstrip("\n")))

    readers = [threading.Thread(target=read, args=(s,)) for s in (proc.stdout, proc.stderr)]
    for r in readers:
        r.start()
    run_file = state_dir_for(run_dir) / "run.json"
    deadline = time.monotonic() + 60
    while not run_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    early = subprocess.run([*CLI, "status", str(run_dir), "--once"], capture_output=True, text=True)
    follow = subprocess.run([*CLI, "status", str(run_dir), "--progress-interval", "1"], capture_output=True, text=True, timeout=240)
    assert proc.wait(timeout=240) == 0
    for r in readers:
        r.join()

    lines = [line for _, line in timed]
    assert not [line for line in lines if CONTROL.search(line)]
    assert len(lines) <= 40, lines
    progress = [t for t, line in timed if line.startswith("planexe-concurrency: running:")]
    assert len(progress) >= 2
    assert all(b - a >= 0.9 for a, b in zip(progress, progress[1:]))  # at most one per interval
    assert not [line for line in lines if "UserWarning" in line or "luigi-interface" in line or "DEBUG" in line]
    assert any(line.startswith("planexe-concurrency: done in") for line in lines)

    log_text = (state_dir_for(run_dir) / "log.txt").read_text(encoding="utf-8")
    log = log_text.splitlines()
    luigi_lines = [line.split(" ", 3)[3] for line in log if " luigi-interface: " in line]
    assert len(luigi_lines) > 100  # Luigi's scheduler talks, into the file
    assert [m for m in set(luigi_lines) if luigi_lines.count(m) > 1 and "Worker Worker" in m] == []
    assert log_text.count("===== Luigi Execution Summary =====") == 2  # one summary: its first and last line
    assert not [line for line in log if "is not of type string" in line]

    # status, from another process: running at first, then the same counts as the events file
    assert early.returncode == 3 and early.stdout.startswith("planexe-concurrency: running:"), early.stdout + early.stderr
    assert follow.returncode == 0, follow.stderr
    final = next(line for line in follow.stdout.splitlines() if line.startswith("planexe-concurrency: done:"))
    events = read_events(state_dir_for(run_dir) / "events.jsonl")
    answered = sum(1 for e in events if e.state is ItemState.COMPLETED)
    assert f"63/63 tasks, LLM calls {answered} answered, 0 in flight, 0 retried, 0 failed" in final
    assert len({e.pid for e in events}) > 4  # the calls came from forked workers, one process per task
    assert "planexe-concurrency: done in" in follow.stdout  # the run's own summary
    assert "planexe-concurrency: running:" in follow.stderr  # plain progress while it followed

    # the picture of the run, from its event files: written at the end, and on request
    out = subprocess.run([*CLI, "timeline", str(run_dir), "--out", str(tmp_path / "pic")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "pic" / "timeline.html").read_text().count("<rect") > 60
    assert (state_dir_for(run_dir) / "timeline.html").is_file()
    once = subprocess.run([*CLI, "status", str(run_dir), "--once"], capture_output=True, text=True)
    assert once.returncode == 0, once.stderr
    assert once.stdout.startswith("planexe-concurrency: done: 63/63 tasks") and "speed-up" in once.stdout


def test_a_failed_run_says_where_and_how_to_resume(
    tmp_path: Path, sim_server_factory: Callable[..., SimServer]
) -> None:
    server = sim_server_factory(fail_models=("broken",))
    cfg = tmp_path / "luigi.cfg"
    cfg.write_text("[planexe_concurrency]\nretry_attempts = 1\n")
    env = {**os.environ, "PLANEXE_SIMLLM_URL": server.url, "LUIGI_CONFIG_PATH": str(cfg)}
    run_dir = tmp_path / "broken"
    proc = subprocess.run(
        [*CLI, "run", "--run-dir", str(run_dir), "--workers", "2", "--llm", "simulated-http-broken", "--speed", "fast"],
        capture_output=True, text=True, env=env, timeout=240,
    )
    assert proc.returncode == 1
    out = proc.stdout.splitlines()
    head = next(line for line in out if "FAILED after" in line)
    assert re.search(r"in task=\w+Task", head), head
    error = next(line for line in out if line.startswith("  error: "))
    assert "broken" in error or "500" in error or "Exhausted" in error, error
    resume = next(line for line in out if line.startswith("  resume with: "))
    assert resume.endswith(f"--run-dir {run_dir}") or f"--run-dir {run_dir}" in resume
    info = json.loads((state_dir_for(run_dir) / "run.json").read_text())
    assert info["state"] == "failed"
    status = subprocess.run([*CLI, "status", str(run_dir)], capture_output=True, text=True, env=env)
    assert status.returncode == 1 and "FAILED after" in status.stdout
