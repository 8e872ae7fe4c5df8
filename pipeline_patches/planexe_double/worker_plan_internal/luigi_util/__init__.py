"""Luigi helpers."""
