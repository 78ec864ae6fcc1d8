"""The pipeline's stages, one module per dvc.yaml stage: `python -m stages.<name>` (README: The pipeline)."""
