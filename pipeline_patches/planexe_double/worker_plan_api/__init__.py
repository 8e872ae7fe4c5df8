"""The double's counterpart of PlanExe's ``worker_plan_api`` package (file names, speed modes)."""
