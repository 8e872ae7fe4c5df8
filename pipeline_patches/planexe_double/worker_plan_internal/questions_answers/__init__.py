"""Questions and answers about the plan."""
