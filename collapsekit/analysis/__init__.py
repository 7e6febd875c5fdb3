"""Static analysis: trace a model, index its weight magnitudes, and predict collapse before pruning."""
