"""LLM plumbing: the fallback executor and the one-call helper most tasks share."""
