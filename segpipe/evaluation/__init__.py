"""Scores: metric definitions, evaluate's running totals, charts."""
