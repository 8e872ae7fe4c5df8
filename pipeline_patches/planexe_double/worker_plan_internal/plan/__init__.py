"""The pipeline and the per-item classes of its WBS and review loops."""
