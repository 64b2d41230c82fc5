#!/usr/bin/env bash
# The resnet search for issue 16, as one device call (/work/shared/DEVICE.md's recipe): the most
# promising run first, each guarded by `timeout`, about 8 minutes in all on one H200.
#
# Each run trains a configs/search recipe, evaluates its best weights on the test split without
# and with flip test-time augmentation (evaluate.py --no-tta / --tta), exports a release with the
# better of the two, and appends one JSON line to $OUT/results.jsonl (accuracy with and without
# TTA, of the members and of the ensemble, training and compile seconds, and the first epoch whose
# validation accuracy reached 95.5%, with the training seconds up to it).
#
# On the device, after ../shared/device/prepare.sh here:
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .device/whl/*.whl \
#     && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 DATA=$PWD/.device/data; \
#     bash benchmarks/resnet_search.sh
# A CPU smoke test with tiny sizes (proves the script end to end; the numbers mean nothing):
#   PYTHON=.venv/bin/python DATA=/usr/share/datasets/fashion-mnist OUT=/tmp/search TIMEOUT_FACTOR=20 \
#     EXTRA="--config.epochs=1 --config.data.train_limit=2048 --config.model.stage_features=(8,16,32)
#     --config.model.blocks_per_stage=1" bash benchmarks/resnet_search.sh
set -uo pipefail

PYTHON=${PYTHON:-python3}
DATA=${DATA:?the folder of the four IDX files}
OUT=${OUT:?the folder to write results into}
EXTRA=${EXTRA:-}  # appended to every train.py command (overrides come last and win)
TIMEOUT_FACTOR=${TIMEOUT_FACTOR:-1}
BUDGET=$(( ${BUDGET:-540} * TIMEOUT_FACTOR ))  # seconds for the whole script: a run that would
# overrun it is shortened, or skipped (a JSON line says so) when under 30 s would be left
RUNS=${RUNS:-/tmp/resnet-search}  # workdirs, outside $OUT: only results.jsonl, releases.tar and
# logs.tar come back
mkdir -p "$OUT/logs" "$RUNS"

# name, config, extra train flags, timeout (seconds on the H200) of the training
search() {
  local name=$1 config=$2 flags=$3 limit=$(( $4 * TIMEOUT_FACTOR ))
  local workdir=$RUNS/$name log=$OUT/logs/$name.log
  local left=$(( BUDGET - SECONDS - 60 * TIMEOUT_FACTOR ))  # keep a minute for evaluation
  if (( left < 30 )); then
    echo "{\"name\": \"$name\", \"skipped\": \"budget of ${BUDGET}s spent\"}" | tee -a "$OUT/results.jsonl"
    return
  fi
  (( limit > left )) && limit=$left
  echo "== $name: $config $flags (timeout ${limit}s)"
  # shellcheck disable=SC2086  # flags and EXTRA are lists of words
  timeout "$limit" "$PYTHON" scripts/train.py --config="$config" --data-dir="$DATA" \
    --workdir="$workdir" --quiet $flags $EXTRA >"$log" 2>&1
  local rc=$?
  for tta in no-tta tta; do
    timeout $(( 120 * TIMEOUT_FACTOR )) "$PYTHON" scripts/evaluate.py --workdir="$workdir" \
      --data-dir="$DATA" --"$tta" --output-dir="$workdir/eval-$tta" >>"$log" 2>&1
  done
  "$PYTHON" - "$name" "$config" "$flags $EXTRA" "$rc" "$workdir" >>"$OUT/results.jsonl" <<'EOF'
import json, sys
from pathlib import Path

name, config, flags, rc, workdir = sys.argv[1:]
workdir = Path(workdir)
def read(path):
    return json.loads(path.read_text()) if path.is_file() else None
result = {"name": name, "config": config, "flags": flags.split(), "train_exit": int(rc)}
summary = read(workdir / "summary.json")
if summary:
    result.update({k: summary[k] for k in ("seeds", "epochs_completed", "best_epoch",
                   "best_val_accuracy", "train_seconds", "compile_seconds")})
    result["device"] = summary["environment"].get("device")
    history = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
    reached = [r for r in history if r["val_accuracy"] >= 0.955]
    if reached:
        result["val_95_5"] = {"epoch": reached[0]["epoch"], "train_seconds": sum(
            r["train_seconds"] for r in history[:reached[0]["epoch"]])}
for tta in ("no-tta", "tta"):
    metrics = read(workdir / f"eval-{tta}" / "metrics.json")
    if metrics:
        members = metrics.get("members")
        result[tta] = {"accuracy": metrics["accuracy"], "loss": metrics["loss"],
                       "members": [m["accuracy"] for m in members] if members else None}
print(json.dumps(result), flush=True)
EOF
  local better
  better=$("$PYTHON" -c '
import json, sys
last = json.loads(open(sys.argv[1]).read().splitlines()[-1])
ok = all(t in last for t in ("no-tta", "tta"))
print(("tta" if last["tta"]["accuracy"] > last["no-tta"]["accuracy"] else "no-tta") if ok else "")
' "$OUT/results.jsonl")
  if [ -n "$better" ]; then
    timeout $(( 60 * TIMEOUT_FACTOR )) "$PYTHON" scripts/export.py --workdir="$workdir" \
      --out="$RUNS/releases/$name" --"$better" >>"$log" 2>&1
  fi
  tail -n 1 "$OUT/results.jsonl"
}

search resnet_reg configs/search/resnet_reg.py "" 100
search resnet_fast configs/search/resnet_fast.py "" 60
search resnet_wide configs/search/resnet_wide.py "" 120
search resnet_reg_x3 configs/search/resnet_reg.py "--seeds=3 --epochs=40" 150

tar -C "$RUNS" -cf "$OUT/releases.tar" releases 2>/dev/null
tar -C "$OUT" -cf "$OUT/logs.tar" logs && rm -r "$OUT/logs"
echo "results: $OUT/results.jsonl"
