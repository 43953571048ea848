"""Checkpoints: safe loading of ours and the authors' files, safetensors export, atomic saving."""
