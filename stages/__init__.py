"""The pipeline's stages, one module per dvc.yaml stage: `python -m stages.<name>` (docs/reference/stages.md)."""
