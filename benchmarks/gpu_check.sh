#!/usr/bin/env bash
# The one job a GPU session runs (see ../shared/DEVICE.md): the accelerator check, within 8 minutes.
#
# Here, from the project's root: ../shared/device/prepare.sh   (data and ml_collections wheels into
# .device/), then one device `run` with carry [".device"], timeout_s 540, and the command
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .device/whl/*.whl && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 DATA=$PWD/.device/data; bash benchmarks/gpu_check.sh
# It writes under $OUT (at most 8 files come back, two folders deep): accelerator_check.json and
# .md (every figure), check.log (the last lines of its output), nvidia-smi.txt, versions.txt and
# recipe.tar.gz (the tuned resnet's config.json, metrics.jsonl and summary.json).
# On a CPU, a quick try of the script itself: OUT=/tmp/out DATA=/usr/share/datasets/fashion-mnist
# BUDGET=60 EXTRA="--models=mlp --train-images=256" bash benchmarks/gpu_check.sh
set -uo pipefail
: "${OUT:?set OUT to the folder whose files come back}" "${DATA:?set DATA to the IDX files}"
BUDGET=${BUDGET:-420}  # seconds for the check; the process is killed 40 s later at the latest
work=$(mktemp -d)
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1 || echo "no nvidia-smi" >"$OUT/nvidia-smi.txt"
python3 -c "import jax, flax, optax, sys; print(sys.version); print('jax', jax.__version__, \
'flax', flax.__version__, 'optax', optax.__version__); print(jax.devices())" \
  >"$OUT/versions.txt" 2>&1
# shellcheck disable=SC2086  # EXTRA holds several flags
timeout -k 10 $((BUDGET + 40)) python3 scripts/benchmark.py --suite=accelerator --out="$work" \
  --budget-seconds="$BUDGET" --train-images=12800 --min-seconds=1 \
  --config.data.dir="$DATA" ${EXTRA:-} 2>&1 | tail -n 300 >"$OUT/check.log"
status=${PIPESTATUS[0]}
cp "$work"/accelerator_check.json "$work"/accelerator_check.md "$OUT"/ 2>/dev/null
if [ -d "$work/recipe" ]; then
  tar -C "$work/recipe" -czf "$OUT/recipe.tar.gz" --ignore-failed-read \
    config.json metrics.jsonl summary.json 2>/dev/null
fi
echo "accelerator check exit status $status; report in $OUT" | tee -a "$OUT/check.log"
cat "$OUT/accelerator_check.md" 2>/dev/null
exit "$status"
