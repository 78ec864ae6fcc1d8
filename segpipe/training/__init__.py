"""The model, its losses and metrics, devices, the memory plan, the training loop and its inputs."""
