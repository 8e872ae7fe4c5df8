"""`planexe-concurrency patch`: the hook goes in before the entry point and comes out exactly."""
from __future__ import annotations

from pathlib import Path

import pytest

from pipeline_patches.flag_toggle import DEFAULT_WORKERS, flag_on, workers_from_env
from pipeline_patches.patch_planexe import HOOK, PatchError, apply, find_pipeline_file, revert

MODULE = '''import luigi

def main():
    pass

if __name__ == '__main__':
    main()
'''


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    target = tmp_path / "worker_plan" / "worker_plan_internal" / "plan" / "run_plan_pipeline.py"
    target.parent.mkdir(parents=True)
    target.write_text(MODULE)
    return tmp_path


def test_apply_inserts_hook_before_entry_point_and_revert_restores_bytes(checkout: Path) -> None:
    target, changed = apply(checkout)
    assert changed and target.name == "run_plan_pipeline.py"
    text = target.read_text()
    assert text.index(HOOK) < text.index("if __name__ == '__main__':")
    compile(text, str(target), "exec")  # still valid Python
    assert apply(checkout) == (target, False)  # idempotent
    assert revert(checkout) == (target, True)
    assert target.read_text() == MODULE
    assert revert(checkout) == (target, False)


def test_patch_refuses_files_without_exactly_one_anchor(tmp_path: Path) -> None:
    f = tmp_path / "run_plan_pipeline.py"
    f.write_text("print('no entry point')\n")
    with pytest.raises(PatchError, match="found 0"):
        apply(f)
    assert f.read_text() == "print('no entry point')\n"
    with pytest.raises(PatchError, match="does not exist"):
        find_pipeline_file(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PatchError, match="no run_plan_pipeline.py under"):
        find_pipeline_file(tmp_path / "empty")


def test_revert_refuses_a_hand_edited_hook(checkout: Path) -> None:
    target, _ = apply(checkout)
    target.write_text(target.read_text().replace("install(globals())", "install(globals())  # edited"))
    with pytest.raises(PatchError, match="edited by hand"):
        revert(checkout)


@pytest.mark.parametrize("value,expected", [("", False), ("0", False), ("off", False), ("1", True), ("yes", True)])
def test_flag_values(value: str, expected: bool) -> None:
    assert flag_on({"PLANEXE_CONCURRENCY": value}) is expected


def test_workers_from_env() -> None:
    assert workers_from_env({}) == DEFAULT_WORKERS
    assert workers_from_env({"PLANEXE_WORKERS": "8"}) == 8
    for bad in ("0", "65", "many"):
        with pytest.raises(ValueError, match=f"PLANEXE_WORKERS='{bad}' is not allowed: expected an integer in 1..64"):
            workers_from_env({"PLANEXE_WORKERS": bad})


def test_lenient_compare_forgives_only_uuids_durations_and_report_time(tmp_path: Path) -> None:
    from pipeline_patches.compare import differing_files

    a, b = tmp_path / "a", tmp_path / "b"
    for d, u, dur, stamp in ((a, "8f14e45f-ceea-467f-a0a4-6a2b1c7e8d90", 1, "2026-01-01 10:00:00"), (b, "c9f0f895-fb98-4b9a-8a6f-0d1e2f3a4b5c", 2, "2026-01-01 10:05:09")):
        d.mkdir(parents=True)
        (d / "raw.json").write_text(f'{{"id": "{u}", "metadata": {{"duration": {dur}}}}}')
        (d / "report.html").write_text(f"<p>Generated on: {stamp} with PlanExe.</p>")
        (d / "same.txt").write_text("same")
    assert differing_files(a, b) == ["raw.json", "report.html"]
    assert differing_files(a, b, lenient=True) == []
    (b / "raw.json").write_text('{"id": "c9f0f895-fb98-4b9a-8a6f-0d1e2f3a4b5c", "metadata": {"duration": 2}, "x": 1}')
    (b / "extra.txt").write_text("new")
    assert differing_files(a, b, lenient=True) == ["extra.txt", "raw.json"]
