"""Records and reports: MLflow runs, the PR report and gate, the dvc.lock check."""
