"""Training: dense training, masked fine-tuning, pruning and learning-rate schedules, devices and torchrun."""
