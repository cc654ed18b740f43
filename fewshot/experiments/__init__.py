"""Experiments: the main job (``compare``: train, then every head on the same novel episodes) and
resumable ablation grids with paired verdicts (``grid``, ``ablate``, ``summary``, ``plots``)."""
