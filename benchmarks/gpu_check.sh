#!/usr/bin/env bash
# GPU checks in one call (run through the device tool or on any CUDA machine from the repo root):
# evaluator and fine-tuning throughput for the SmolLM2-135M shape (random weights) at 32k tokens.
# Results go to $OUT (or benchmarks/runs/gpu). LENGTH/L0 can be lowered for a quick try.
set -uo pipefail
OUT=${OUT:-benchmarks/runs/gpu}
LENGTH=${LENGTH:-32768}
L0=${L0:-8192}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src:${PYTHONPATH:-} PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
PY=${PY:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
$PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/gpu.txt"
$PY benchmarks/evaluator.py --random smollm2 --length "$LENGTH" --batch 1 --repeats 3 --out "$OUT/evaluator.json" > "$OUT/evaluator.log" 2>&1
$PY benchmarks/finetune_throughput.py --random smollm2 --length "$LENGTH" --l0 "$L0" --batch 1 --steps 3 \
    --attn sdpa --checkpointing on --out "$OUT/finetune_sdpa.json" > "$OUT/finetune_sdpa.log" 2>&1
$PY benchmarks/finetune_throughput.py --random smollm2 --length "$LENGTH" --l0 "$L0" --batch 1 --steps 3 \
    --attn flex_attention --checkpointing on --variants pipeline --out "$OUT/finetune_flex.json" > "$OUT/finetune_flex.log" 2>&1
$PY - "$OUT" <<'PYEOF'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
for name in ("evaluator", "finetune_sdpa", "finetune_flex"):
    p = out / f"{name}.json"
    if not p.exists():
        print(name, "FAILED:", (out / f"{name}.log").read_text()[-800:]); continue
    r = json.loads(p.read_text())
    for v in ("fast", "naive", "pipeline"):
        if v in r:
            d = r[v]
            print(name, v, {k: d.get(k) for k in ("seconds", "tokens_per_s", "peak_mib", "mfu", "attn", "error") if k in d})
PYEOF
