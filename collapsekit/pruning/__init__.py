"""Pruning: apply Global MP (+MT) masks, store them, export sparse checkpoints and compact pruned models."""
