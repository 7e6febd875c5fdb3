"""Validation: prune for real, fine-tune, and compare every prediction with what happened."""
