#!/usr/bin/env bash
# Sets up .venv if needed, then runs the main job offline.
source "$(dirname "$0")/_venv.sh"
sana models list
sana models info sana-1.6b-4k
