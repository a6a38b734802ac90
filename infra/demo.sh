#!/usr/bin/env bash
# The whole loop on the embedded default: serve (API + local Ray head + SQLite + MLflow store +
# file artifacts under DETRFORGE_HOME), a synthetic dataset, two 2-worker fine-tunes over REST,
# both registered, gated promotions (AP on the pinned eval set + p95 on the CPU target), a gate
# refusing the worse candidate, a rollback, then the audit trail and the benchmark history.
# Stops at the first failed step, naming it: nothing falls through to an older job.
set -euo pipefail
shopt -s inherit_errexit
trap 'echo "!! make demo stopped: \"$BASH_COMMAND\" failed (exit $?) at infra/demo.sh:$LINENO" >&2' ERR
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
DF="$VENV/bin/detrforge"
export DETRFORGE_HOME=${DETRFORGE_HOME:-$PWD/.detrforge}
export MLFLOW_DISABLE_TELEMETRY=true HF_HUB_OFFLINE=1
PORT=${DETRFORGE_PORT:-8321}
EPOCHS=${DEMO_EPOCHS:-10}
SHORT_EPOCHS=${DEMO_SHORT_EPOCHS:-2}
mkdir -p "$DETRFORGE_HOME"

ready() { curl -sf "http://127.0.0.1:$PORT/ready" >/dev/null; }
if ! curl -sf "http://127.0.0.1:$PORT/health" >/dev/null; then
  echo "== starting detrforge serve (log: $DETRFORGE_HOME/serve.log)"
  "$DF" serve >>"$DETRFORGE_HOME/serve.log" 2>&1 &
  SERVE_PID=$!
  for _ in $(seq 1 180); do
    ready && break
    if ! kill -0 "$SERVE_PID" 2>/dev/null; then
      echo "!! detrforge serve exited; the end of its log:" >&2
      tail -40 "$DETRFORGE_HOME/serve.log" >&2
      exit 1
    fi
    sleep 1
  done
fi
if ! ready; then
  echo "!! the API at http://127.0.0.1:$PORT is not ready:" >&2
  "$DF" status >&2 || true
  exit 1
fi
"$DF" status
echo "== API up at http://127.0.0.1:$PORT (docs: /docs); admin key in $DETRFORGE_HOME/admin.key"

DATA=demo-data/shapes
if [ ! -d "$DATA" ]; then
  echo "== generating a synthetic COCO dataset in $DATA"
  "$DF" data synth --out "$DATA" --seed 0 --train 64 --valid 16 --size 128
fi
"$DF" data validate "$DATA"

finetune() {  # $1 epochs; prints the new job's id; fails unless that job SUCCEEDED
  "$DF" finetune submit --dataset "$DATA" --model-size nano --resolution 128 \
    --epochs "$1" --batch-size 4 --lr 5e-4 --num-queries 50 --group-detr 1 \
    --num-workers 2 --wait
}
echo "== fine-tune A: RF-DETR Nano, 128 px, 2 Ray workers, $SHORT_EPOCHS epochs"
JOB_A=$(finetune "$SHORT_EPOCHS")
echo "== fine-tune B: the same for $EPOCHS epochs"
JOB_B=$(finetune "$EPOCHS")

MODEL=demo-shapes-$(date +%s)
echo "== registry: model $MODEL, CPU target, gate policy (AP drop <= 0.02, p95 ratio <= 1.5)"
"$DF" models create "$MODEL" --description "make demo"
"$DF" bench targets list | grep -q '^cpu-local ' || \
  "$DF" bench targets create cpu-local --resources '{"CPU": 1}' --num-threads 1 \
    --description "this machine, 1 thread"
"$DF" policy set "$MODEL" --eval-dataset "$DATA" --max-ap-drop 0.02 \
  --target cpu-local:ratio=1.5 --reason "demo policy"
"$DF" versions register "$MODEL" --job "$JOB_A" --description "short training"
"$DF" versions register "$MODEL" --job "$JOB_B" --description "longer training"

echo "== promote v1 (A) to production: first version, gates measure it"
"$DF" promote "$MODEL" 1 --to production --reason "first release" --wait
echo "== promote v2 (B) to production: compared with v1 on the same eval set and target"
if "$DF" promote "$MODEL" 2 --to production --reason "longer training" --wait; then
  echo "== promote v1 again: now the worse candidate, the AP gate must refuse it"
  if "$DF" promote "$MODEL" 1 --to production --reason "demo: worse candidate" --wait; then
    echo "!! the gate let a worse candidate through" >&2
    exit 1
  fi
  echo "== refused, as it should be"
  echo "== rollback: production returns to the previous production version, no gates"
  "$DF" rollback "$MODEL" --reason "demo: emergency lever"
else
  echo "== v2 was refused (see the gate above): v1 stays in production"
fi
"$DF" models show "$MODEL"
echo "== audit trail of $MODEL"
"$DF" audit "$MODEL"
echo "== benchmark history (cpu-local)"
"$DF" bench history --target cpu-local --limit 10
echo "== MLflow UI: $VENV/bin/mlflow ui --backend-store-uri sqlite:///$DETRFORGE_HOME/mlflow.db"
echo "   (registered model $MODEL carries the alias 'production', and 'staging' once a version is there)"
echo "== detrforge serve keeps running for you to explore; stop it (and its Ray head) with:"
echo "   $DF stop"
