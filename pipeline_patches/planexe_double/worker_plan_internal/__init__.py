"""The double's counterpart of PlanExe's ``worker_plan_internal`` package."""
