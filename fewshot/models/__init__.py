"""Models: encoders by name, metric losses / miners / distances (pytorch-metric-learning),
input preprocessing, and checkpoints (atomic writes, safe reads, an encoder rebuilt from one)."""
