#!/usr/bin/env bash
# One MLflow tracking server for the whole cluster (run it on the head).
# Single host: sqlite + a local folder (the defaults below).
# Production: MLFLOW_BACKEND=postgresql://USER:PASS@HOST:5432/mlflow
#             MLFLOW_ARTIFACTS=s3://BUCKET/mlflow-artifacts   (or gs://, wasbs://)
set -euo pipefail
BACKEND="${MLFLOW_BACKEND:-sqlite:///$HOME/mlflow/mlflow.db}"
ARTIFACTS="${MLFLOW_ARTIFACTS:-$HOME/mlflow/artifacts}"
mkdir -p "$HOME/mlflow"
# --artifacts-destination: clients upload through the server (HTTP), so
# workers and laptops need no storage credentials.
exec mlflow server --host "${MLFLOW_HOST:-0.0.0.0}" --port "${MLFLOW_PORT:-5000}" --workers "${MLFLOW_WORKERS:-2}" \
    --backend-store-uri "$BACKEND" --artifacts-destination "$ARTIFACTS"
