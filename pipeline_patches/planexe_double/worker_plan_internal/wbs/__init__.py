"""The work breakdown structure tree."""
