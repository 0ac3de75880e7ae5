"""Training the fusion networks: configuration, the loop, checkpoints, losses, export of shipped weights."""
