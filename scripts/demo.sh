#!/usr/bin/env bash
# The main job, as a user runs it on a cluster: start a local Ray head with token auth and a loopback
# dashboard (unless one is running), submit pipelines/grpo.py with `ray job submit`, stop the head we started.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
export RAY_AUTH_MODE=token
run_name="${RUN_NAME:-demo}"

[ -s "$HOME/.ray/auth_token" ] || ray get-auth-token --generate >/dev/null
started=0
if ! ray status --address 127.0.0.1:6379 >/dev/null 2>&1; then
  echo "[demo] starting a local Ray head (token auth, dashboard on 127.0.0.1:8265)"
  ray start --head --port 6379 --dashboard-host 127.0.0.1 --dashboard-port 8265 --disable-usage-stats >/dev/null
  started=1
fi
stop_head() { if [ "$started" = 1 ]; then echo "[demo] stopping the Ray head it started"; ray stop >/dev/null 2>&1 || true; fi; }
trap stop_head EXIT

ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
  python pipelines/grpo.py run_name="$run_name" runs_dir="$PWD/runs" cache_dir="$PWD/.cache" "$@"
echo "[demo] results in runs/$run_name/ (metrics.jsonl, summary.json, reward_curve.png, TensorBoard events)"
