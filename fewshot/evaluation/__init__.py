"""Evaluation: the one embedding path (with test-time augmentation), every head scored on the very
same episodes, statistics (95% CIs, paired tests, Holm), retrieval figures and the report."""
