"""Training: one ``Trainer`` (device, torchrun, schedule, AMP, finite guard, resume, validation,
checkpoints, callbacks) and pluggable objectives (metric + cross-entropy, episodic ProtoNet, R2-D2)."""
