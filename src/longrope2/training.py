"""Pieces shared by the training loops (scale-model pretraining, mixed-window fine-tuning)."""

import math


def warmup_cosine(step: int, steps: int, warmup_steps: int, min_lr_ratio: float) -> float:
    """LR multiplier: linear warm-up, then cosine decay to ``min_lr_ratio`` at ``steps``."""
    warm = min(1.0, (step + 1) / warmup_steps)
    cos = 0.5 * (1 + math.cos(math.pi * min(1.0, step / steps)))
    return warm * (min_lr_ratio + (1 - min_lr_ratio) * cos)
