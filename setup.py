"""Only what pyproject.toml cannot say: ship the start-up hook at the top of site-packages."""
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HOOK = Path(__file__).parent / "pipeline_patches" / "planexe_concurrency_startup.pth"


class BuildPyWithStartupHook(build_py):
    """Puts the ``.pth`` line beside the packages, so a wheel installs it into site-packages
    (see pipeline_patches/startup.py; editable installs use ``planexe-concurrency hook install``)."""

    def run(self) -> None:
        super().run()
        self.copy_file(str(HOOK), str(Path(self.build_lib) / HOOK.name))

    def get_outputs(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return [*super().get_outputs(*args, **kwargs), str(Path(self.build_lib) / HOOK.name)]


setup(cmdclass={"build_py": BuildPyWithStartupHook})
