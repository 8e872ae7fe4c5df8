"""The self-audit checklist."""
