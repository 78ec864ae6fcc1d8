"""Params, their schema, entry points, atomic outputs, progress lines, processes."""
