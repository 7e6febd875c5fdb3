"""Files: checkpoints, the sparse checkpoint format and its mask codes, tensors streamed from disk, atomic writes."""
