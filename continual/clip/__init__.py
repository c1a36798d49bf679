"""The CLIP model: open_clip backbones and their trainability, the zero-shot head, causal text towers read to the end token, frozen-trunk extraction, cached inputs, the optimizer and its schedule."""
