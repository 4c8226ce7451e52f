#!/usr/bin/env bash
# Sets up .venv if needed, then runs the test suite (CPU; GPU tests skip without a GPU).
source "$(dirname "$0")/_venv.sh"
bash scripts/browser_env.sh  # headless Chromium for tests/test_serve_page.py (once)
bash scripts/comfyui_env.sh  # ComfyUI for tests/test_comfyui.py (once; skipped without its source)
exec python -m pytest -q "$@"
