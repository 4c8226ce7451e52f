# Sourced by the scripts beside it: makes .venv on first use and installs the project into it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
stamp=.venv/.installed-$(cat pyproject.toml | sha1sum | cut -c1-12)
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  # Without a GPU, PyTorch's CPU build: a plain `torch` requirement pulls several GB of CUDA libraries on Linux.
  # PyTorch's own CPU index first (a short timeout where it is unreachable), then the configured index.
  if ! command -v nvidia-smi >/dev/null && [ "$(uname -s)" = Linux ]; then
    .venv/bin/python -m pip install -q --timeout 15 --retries 1 torch --index-url https://download.pytorch.org/whl/cpu \
      2>/dev/null || .venv/bin/python -m pip install -q "torch==2.13.0" || .venv/bin/python -m pip install -q torch
  else
    .venv/bin/python -m pip install -q "torch==2.13.0" || .venv/bin/python -m pip install -q torch
  fi
  .venv/bin/python -m pip install -q -e ".[test]"
  touch "$stamp"
fi
export PATH="$PWD/.venv/bin:$PATH"
