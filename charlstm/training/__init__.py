"""Training layer: configs, presets, schedule, evaluation, checkpoints, resume and the loop."""
