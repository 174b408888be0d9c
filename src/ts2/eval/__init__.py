"""Evaluation metrics (pure functions) and one module per benchmark (PAPER.md §4)."""
