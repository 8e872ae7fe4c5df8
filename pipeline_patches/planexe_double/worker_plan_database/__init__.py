"""Stand-in for PlanExe's multi-user database worker (see app.py)."""
