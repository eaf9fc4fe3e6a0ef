"""LongRoPE2: near-lossless context-window extension by per-dimension RoPE rescaling."""

__version__ = "0.1.0"
