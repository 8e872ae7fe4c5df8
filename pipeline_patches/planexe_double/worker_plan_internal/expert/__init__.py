"""Finding experts and collecting their criticism."""
