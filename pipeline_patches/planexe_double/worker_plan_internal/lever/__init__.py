"""Levers and scenarios."""
