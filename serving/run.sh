#!/usr/bin/env bash
# Start the model server with the configs in this directory: the real tensorflow_model_server when
# it is on PATH (the tensorflow/serving image), else `python -m serving` with the same flags.
#
#   serving/run.sh [--flag=value ...]        extra flags are appended; a later flag wins
#
# Environment (defaults in brackets):
#   MODELS_DIR   where the model directories are [/models]. models.config names /models/<model>;
#                any other MODELS_DIR gets a copy of the config with the base paths rewritten.
#   CONFIG_DIR   where models.config, batching.config and monitoring.config are [this directory]
#   GRPC_PORT    gRPC port [8500]      REST_PORT   REST port [8501]   (0 = pick free ones)
#   PYTHON       interpreter for the fallback [the repository's .venv, else python3]
#
# A version that fails to load is retried once, 5 s later, then given up (TF Serving's defaults: 5
# retries a minute apart): a model server whose models cannot load stops in seconds, saying why.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
config_dir="${CONFIG_DIR:-$here}"
models_dir="${MODELS_DIR:-/models}"
model_config="$config_dir/models.config"

if [ "$models_dir" != "/models" ]; then
  if [ ! -d "$models_dir" ]; then
    echo "run.sh: MODELS_DIR=$models_dir is not a directory" >&2
    exit 2
  fi
  models_dir="$(cd "$models_dir" && pwd)"
  rendered="$(mktemp "${TMPDIR:-/tmp}/models.config.XXXXXX")"
  sed "s#base_path: \"/models/#base_path: \"$models_dir/#" "$model_config" > "$rendered"
  model_config="$rendered"
fi

flags=(
  --port="${GRPC_PORT:-8500}"
  --rest_api_port="${REST_PORT:-8501}"
  --model_config_file="$model_config"
  --model_config_file_poll_wait_seconds=60
  --allow_version_labels_for_unavailable_models=true
  --file_system_poll_wait_seconds=1
  --max_num_load_retries=1
  --load_retry_interval_micros=5000000
  --enable_batching=true
  --batching_parameters_file="$config_dir/batching.config"
  --monitoring_config_file="$config_dir/monitoring.config"
  --enable_grpc_healthcheck_service=true
)

if command -v tensorflow_model_server >/dev/null 2>&1; then
  exec tensorflow_model_server "${flags[@]}" "$@"
fi

python="${PYTHON:-}"
if [ -z "$python" ]; then
  if [ -x "$here/../.venv/bin/python" ]; then python="$here/../.venv/bin/python"; else python=python3; fi
fi
echo "run.sh: tensorflow_model_server not on PATH; running python -m serving" >&2
cd "$here/.."
exec "$python" -m serving "${flags[@]}" "$@"
