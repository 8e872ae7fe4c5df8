"""Assumption helpers (shortening markdown)."""
