"""Long-context evaluation in three parts that change for different reasons: task data (``ruler``: RULER's
13 tasks generated offline and sized per length), the model side (``lm``: one lm-eval ``LM`` wrapping the
tested greedy generation that rebuilds the KV cache past L0) and scoring through lm-eval (``harness``:
NVIDIA's metrics, local task configs, ``simple_evaluate``)."""
