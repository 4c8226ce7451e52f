#!/usr/bin/env bash
# Sets up .venv if needed, then runs the test suite (CPU; GPU tests skip without a GPU).
source "$(dirname "$0")/_venv.sh"
exec python -m pytest -q "$@"
