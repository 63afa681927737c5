"""Readers of evaluation data: from a local folder (``../shared/data``), a package, or the HF hub."""
