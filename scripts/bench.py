#!/usr/bin/env python3
"""Before/after timing of PlanExe's pipeline; the same as `planexe-concurrency bench` (see --help)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline_patches.bench import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
