#!/usr/bin/env bash
# The main job, as a user runs it on a cluster: start a local Ray head with token auth and a loopback
# dashboard (unless one is running), submit pipelines/grpo.py with `ray job submit`, stop the head we started.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
export RAY_AUTH_MODE=token
run_name="${RUN_NAME:-demo}"
# The head's ports: the defaults Ray users know; a test (tests/test_demo.py) passes free ones.
gcs_port="${RAY_HEAD_PORT:-6379}"
dash_port="${RAY_DASHBOARD_PORT:-8265}"

[ -s "$HOME/.ray/auth_token" ] || ray get-auth-token --generate >/dev/null
started=0
if ! ray status --address "127.0.0.1:$gcs_port" >/dev/null 2>&1; then
  echo "[demo] starting a local Ray head (token auth, dashboard on 127.0.0.1:$dash_port)"
  # The job agent's HTTP port defaults to 52365; any other Ray on this machine may hold it, and then no
  # job can be submitted. Take a free one.
  agent_port=$(python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  # --block keeps `ray start` in the foreground of its own process group: stopping that group stops
  # exactly this head (`ray stop` would stop every Ray on the machine).
  setsid ray start --head --block --port "$gcs_port" --dashboard-host 127.0.0.1 --dashboard-port "$dash_port" \
    --dashboard-agent-listen-port "$agent_port" --disable-usage-stats >.ray-head.log 2>&1 &
  head_pid=$!
  started=1
  # Wait for the dashboard (the job API) to listen, not just for the node: on a loaded machine it lags.
  for _ in $(seq 300); do
    python -c "import socket; socket.create_connection(('127.0.0.1', $dash_port), 1).close()" 2>/dev/null && break
    kill -0 "$head_pid" 2>/dev/null || { echo "[demo] the Ray head failed to start:"; tail -20 .ray-head.log; exit 1; }
    sleep 1
  done
fi
stop_head() {
  if [ "$started" = 1 ]; then
    echo "[demo] stopping the Ray head it started"
    kill -TERM -- "-$head_pid" 2>/dev/null || true
    wait "$head_pid" 2>/dev/null || true
  fi
}
trap stop_head EXIT

# `make demo` twice replaces the first demo's folder (a run folder that holds a run needs resume=true or
# overwrite=true); pass resume=true or overwrite=false to keep it.
case " $* " in
  *" resume=true "*|*" overwrite="*) ;;
  *) set -- overwrite=true "$@" ;;
esac

# A fresh head's job agent can take a while to come up on a small machine: retry only that refusal.
for attempt in 1 2 3 4 5 6 7 8 9 10; do
  set +e
  ray job submit --address "http://127.0.0.1:$dash_port" --working-dir . -- \
    python pipelines/grpo.py run_name="$run_name" runs_dir="$PWD/runs" cache_dir="$PWD/.cache" "$@" 2>&1 | tee .ray-submit.log
  rc=${PIPESTATUS[0]}
  set -e
  if [ "$rc" = 0 ]; then break; fi
  if ! grep -qE "No available agent|Failed to connect to Ray" .ray-submit.log || [ "$attempt" = 10 ]; then rm -f .ray-submit.log; exit "$rc"; fi
  echo "[demo] the head's job agent is not up yet; retrying in 10 s"
  sleep 10
done
rm -f .ray-submit.log
echo "[demo] results in runs/$run_name/ (metrics.jsonl, summary.json, reward_curve.png, TensorBoard events)"
