#!/usr/bin/env bash
# The embedded default end to end: serve (API + local Ray head + SQLite + MLflow store + file
# artifacts under DETRFORGE_HOME), a synthetic dataset, a 2-worker fine-tune over REST with live
# progress, then the job's state, MLflow run, best checkpoint URI + sha256 and validation AP.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
DF="$VENV/bin/detrforge"
export DETRFORGE_HOME=${DETRFORGE_HOME:-$PWD/.detrforge}
export MLFLOW_DISABLE_TELEMETRY=true HF_HUB_OFFLINE=1
PORT=${DETRFORGE_PORT:-8321}
EPOCHS=${DEMO_EPOCHS:-10}
mkdir -p "$DETRFORGE_HOME"

if ! curl -sf "http://127.0.0.1:$PORT/health" >/dev/null; then
  echo "== starting detrforge serve (log: $DETRFORGE_HOME/serve.log)"
  nohup "$DF" serve >>"$DETRFORGE_HOME/serve.log" 2>&1 &
  for _ in $(seq 1 120); do
    curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break
    sleep 1
  done
  curl -sf "http://127.0.0.1:$PORT/health" >/dev/null || { tail -20 "$DETRFORGE_HOME/serve.log"; exit 1; }
fi
echo "== API up at http://127.0.0.1:$PORT (docs: /docs); admin key in $DETRFORGE_HOME/admin.key"

DATA=demo-data/shapes
if [ ! -d "$DATA" ]; then
  echo "== generating a synthetic COCO dataset in $DATA"
  "$DF" data synth --out "$DATA" --seed 0 --train 64 --valid 16 --size 128
fi
"$DF" data validate "$DATA"

echo "== fine-tuning RF-DETR Nano at 128 px on 2 Ray workers for $EPOCHS epochs"
"$DF" finetune submit --dataset "$DATA" --model-size nano --resolution 128 \
  --epochs "$EPOCHS" --batch-size 4 --lr 5e-4 --num-queries 50 --group-detr 1 \
  --num-workers 2 --wait
echo "== MLflow UI: $VENV/bin/mlflow ui --backend-store-uri sqlite:///$DETRFORGE_HOME/mlflow.db"
echo "== stop everything: pkill -f 'detrforge serve'; $DF cluster down"
