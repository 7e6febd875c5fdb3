"""Files: checkpoints, tagged safetensors and atomic writes."""
