"""Premise attack and premortem."""
