#!/usr/bin/env bash
# The nano model's recipe, from nothing, with the project's own commands (one CUDA GPU).
#
#   bash scripts/train_nano.sh WORK [stage]
#
# Stages (each resumable; run them in order, or all with no stage):
#   init   assemble a nano model with a random DiT around the autoencoder $VAE (tokenizer and Gemma-2 from seed 0)
#   data   render the shapes dataset (held-out colour-shape pairs never appear)
#   train  train the DiT from scratch with `sana finetune --init random`; a second call resumes
#   score  prompt adherence of the result, and a sample grid
# The shipped model (sana/nano/model) is this recipe with the defaults below on one H100: 18,000 steps, final loss
# 0.048 (settings and loss log in assets/nano/dit-*). Its autoencoder came from `sana shapes train-vae DIR
# --steps 12000 --batch 32 --lr 1e-3 --seed 0 --max-minutes 6.7` (5,987 steps; 38.2 dB PSNR; assets/nano/vae-train.json)
# and is reused from the shipped model; VAE=DIR/vae uses another.
# Environment: SANA (the command, default `sana`), VAE (autoencoder folder, default sana/nano/model/vae),
# STEPS (DiT steps, default 18000), NUM (dataset size, default 20000), COMPILE (1: `--compile`, faster on a GPU
# once its ~1 minute of compilation is paid), MINUTES (`--max-minutes`: export what is trained by then; 0 = none).
set -euo pipefail
WORK=${1:?usage: train_nano.sh WORK [init|data|train|score]}
STAGE=${2:-all}
SANA=${SANA:-sana}
VAE=${VAE:-sana/nano/model/vae}
STEPS=${STEPS:-18000}
NUM=${NUM:-20000}
COMPILE=${COMPILE:-1}
MINUTES=${MINUTES:-0}
mkdir -p "$WORK"

stage() { [[ "$STAGE" == all || "$STAGE" == "$1" ]]; }

if stage init && [[ ! -d "$WORK/init" ]]; then
    $SANA shapes build "$WORK/init" --vae "$VAE" --seed 0 --dtype fp16
fi
if stage data && [[ ! -f "$WORK/data/metadata.jsonl" ]]; then
    $SANA shapes make "$WORK/data" --num "$NUM" --seed 0
fi
if stage train; then
    extra=()
    [[ -f "$WORK/run/train_config.json" ]] && extra+=(--resume)
    [[ "$COMPILE" == 1 ]] && extra+=(--compile)
    $SANA finetune "$WORK/data" --model "$WORK/init" --init random --out "$WORK/run" --cache "$WORK/cache" "${extra[@]}" \
        --steps "$STEPS" --max-minutes "$MINUTES" --batch-size 256 --lr 5e-4 --warmup 500 --lr-schedule cosine --ema 0.999 \
        --caption-dropout 0.1 --no-gradient-checkpointing --checkpoint-every 1000 --keep 2 --log-every 50 \
        --save-dtype fp16 --val-prompt "a large red circle in the center on a white background" --val-every 5000
fi
if stage score; then
    $SANA shapes score --model "$WORK/run/model" --num 200 --seed 0 --cfg 3 --out "$WORK/grid.png" --rows "$WORK/rows.jsonl"
fi
