#!/usr/bin/env bash
# Sets up .venv if needed, then runs the main job offline: the built-in nano model draws two prompts (the second as
# the best of 4 seeds by its shapes checker) and the nano video model one clip on the CPU (no download; files land
# in out/demo/, never over earlier ones), and the registry of real models is listed.
source "$(dirname "$0")/_venv.sh"
# --model names the built-in models, so a real model downloaded since does not take their place
sana gen "a large red circle in the center on a white background" --model nano --device cpu -o out/demo/
sana gen "a small yellow triangle on the left and a large purple square on the right on a gray background" \
    --model nano --best-of 4 --device cpu -o out/demo/
sana video "a large red circle moving right on a white background" --model nano-video --device cpu -o out/demo/
sana models list
