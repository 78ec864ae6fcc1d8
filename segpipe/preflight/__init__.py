"""The checks before a long training: capacity, memory, overfitting one batch."""
