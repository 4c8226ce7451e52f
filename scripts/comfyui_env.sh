#!/usr/bin/env bash
# Builds the Python environment the node pack's tests run ComfyUI in: .venv/comfyui, kept between runs (rebuilt
# when the ComfyUI source changes; our package reinstalled into it when pyproject.toml does). Without the ComfyUI
# source it does nothing: those tests skip.
#
# A venv of its own, because ComfyUI imports torchvision as it starts, and the package index has torchvision only
# as a build against the CUDA build of torch (the test environment has the CPU build): the two are installed
# together from the index (about 3.5 GB; it runs on the CPU). torchaudio is left out: no build on the index goes
# with this torch, and only ComfyUI's audio nodes import it (they are then reported as not loaded).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
tarball=${SANA_COMFYUI_TARBALL:-../shared/vendor/comfyui-a125cd84.tar.gz}
if [ ! -f "$tarball" ]; then
  echo "comfyui_env: no ComfyUI source at $tarball; the ComfyUI tests will skip"
  exit 0
fi
env_dir=.venv/comfyui
py=$env_dir/bin/python
base_stamp=$env_dir/.comfyui-$(sha1sum < "$tarball" | cut -c1-12)
if [ ! -f "$base_stamp" ]; then
  echo "comfyui_env: building $env_dir (once; several minutes)"
  rm -rf "$env_dir"
  python3 -m venv "$env_dir"
  scratch=$(mktemp -d)
  trap 'rm -rf "$scratch"' EXIT
  tar xzf "$tarball" -C "$scratch"
  # The index's torch and torchvision of one release, past this machine's local wheel folder (which holds the
  # CPU build of torch only).
  env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null "$py" -m pip install -q "torch==2.13.0" "torchvision==0.28.0"
  # ComfyUI's requirements but torch, torchvision (above) and torchaudio; requests is imported but not listed.
  grep -v -E '^(torch|torchvision|torchaudio)\s*$' "$scratch"/ComfyUI/requirements.txt > "$scratch/requirements.txt"
  "$py" -m pip install -q -r "$scratch/requirements.txt" requests
  touch "$base_stamp"
fi
# Our package (editable: the tests run the checkout's code), again whenever pyproject.toml changes.
project_stamp=$env_dir/.project-$(sha1sum < pyproject.toml | cut -c1-12)
if [ ! -f "$project_stamp" ]; then
  "$py" -m pip install -q -e .
  rm -f "$env_dir"/.project-*
  touch "$project_stamp"
fi
