#!/usr/bin/env bash
# The nano video model's recipe, from nothing, with the project's own commands (one CUDA GPU).
#
#   bash scripts/train_nano_video.sh WORK [stage]
#
# Stages (run them in order, or all with no stage; each one done is skipped, `train` resumes):
#   vae    train the Wan-layout autoencoder on the moving-shapes grammar (`sana shapes train-vae --video`)
#   init   assemble a nano video model around it: a fresh DiT, the nano image model's tokenizer and Gemma-2 (fp32)
#   data   render the moving-shapes clips (`sana shapes make --video`: 128 px, 17 frames at 8 fps, with captions)
#   train  train the DiT from scratch with `sana finetune --init random`; a second call resumes
#   score  adherence on fresh prompts at the defaults, and an animated grid of samples
#   ship   the fp16 model folder for the package (default sana/nano/video_model, the folder `--model nano-video` and
#          `sana video`'s fallback read), scored again as shipped
# Environment: SANA (the command, default `sana`), VAE (the autoencoder; the vae stage runs only where this folder
# does not exist: default assets/nano/video-vae/vae, the trained one below; VAE=WORK/vae/vae trains one from
# scratch), VAE_STEPS (default 6000), VAE_BATCH
# (clips a step, default 16), VAE_LR (default 5e-4), VAE_MINUTES (`--max-minutes` of the VAE, default 0 = none; the
# cosine then follows the clock), VAE_PRECISION (bf16 or fp32), VAE_FROM (an earlier autoencoder folder to go on
# from, with VAE_SEED another seed for unseen clips; default none and 0), VAE_EVAL (clips for its latent statistics
# and scores, default 64), VAE_CROP_FRAMES / VAE_CROP_SIDE (train on random crops of the clips, e.g. 17 frames of
# 64 px; default whole clips), STEPS (DiT steps, default 18000), BATCH (clips a DiT step, default 256), NUM (clips,
# default 20000), FORMAT (mp4, or png frame folders where imageio-ffmpeg has no ffmpeg), COMPILE (1: `--compile`),
# MINUTES (`--max-minutes` of the DiT stage; 0 = none), SCORE_NUM (clips scored, default 200), SHIP (the shipped
# folder, default sana/nano/video_model).
# The autoencoder in assets/nano/video-vae (fp16 on disk; 30.7 dB PSNR, all 64 evaluation clips fully correct) came from two
# H200 runs of the vae stage (2026-12-04, the training step captured as a CUDA graph): `VAE_BATCH=16 VAE_LR=6e-4
# VAE_CROP_FRAMES=17 VAE_CROP_SIDE=64 VAE_MINUTES=7.4` (2,918 steps beside another run; 21.9 dB on whole clips),
# then whole clips from it, `VAE_FROM=that VAE_SEED=1 VAE_BATCH=16 VAE_LR=5e-4 VAE_MINUTES=8.2` (2,665 steps).
# Crops of 9 frames (or of 64 px at the start) generalised badly to whole clips (17.4 dB with a lower crop loss).
# The DiT settings are the nano image model's (batch 256, lr 5e-4 cosine, warm-up 500, EMA 0.999, caption dropout
# 0.1). The shipped DiT (sana/nano/video_model) is this recipe with `COMPILE=1 FORMAT=png` (the default 18,000 steps)
# on an H200 (2026-12-05): rendering 72 s, the latent and caption cache 246 s, then ~170 s of start-up and
# compilation and ~23.4 steps/s, 937 s of training in all to a loss of 0.0122; 99% / 97% of one- / two-object clips
# fully correct (`sana shapes score --video --num 200 --seed 0`, fp32 on a CPU). At 6,000 steps it scored 87% / 76%.
set -euo pipefail
WORK=${1:?usage: train_nano_video.sh WORK [vae|init|data|train|score|ship]}
STAGE=${2:-all}
SANA=${SANA:-sana}
VAE=${VAE:-assets/nano/video-vae/vae}
VAE_STEPS=${VAE_STEPS:-6000}
VAE_BATCH=${VAE_BATCH:-16}
VAE_MINUTES=${VAE_MINUTES:-0}
VAE_LR=${VAE_LR:-5e-4}
VAE_PRECISION=${VAE_PRECISION:-bf16}
VAE_FROM=${VAE_FROM:-}
VAE_SEED=${VAE_SEED:-0}
VAE_EVAL=${VAE_EVAL:-64}
VAE_CROP_FRAMES=${VAE_CROP_FRAMES:-}
VAE_CROP_SIDE=${VAE_CROP_SIDE:-}
STEPS=${STEPS:-18000}
BATCH=${BATCH:-256}
NUM=${NUM:-20000}
FORMAT=${FORMAT:-mp4}
COMPILE=${COMPILE:-0}
MINUTES=${MINUTES:-0}
SCORE_NUM=${SCORE_NUM:-200}
SHIP=${SHIP:-sana/nano/video_model}
mkdir -p "$WORK"

stage() { [[ "$STAGE" == all || "$STAGE" == "$1" ]]; }

if stage vae && [[ ! -d "$VAE" ]]; then
    extra=()
    [[ "$VAE_MINUTES" != 0 ]] && extra+=(--max-minutes "$VAE_MINUTES")
    [[ -n "$VAE_FROM" ]] && extra+=(--start-from "$VAE_FROM")
    [[ -n "$VAE_CROP_FRAMES" ]] && extra+=(--crop-frames "$VAE_CROP_FRAMES")
    [[ -n "$VAE_CROP_SIDE" ]] && extra+=(--crop-side "$VAE_CROP_SIDE")
    [[ "$(basename "$VAE")" == vae ]] || { echo "VAE=$VAE: the vae stage writes FOLDER/vae; name a path ending in /vae" >&2; exit 2; }
    $SANA shapes train-vae "$(dirname "$VAE")" --video --steps "$VAE_STEPS" --batch "$VAE_BATCH" --lr "$VAE_LR" --seed "$VAE_SEED" --"$VAE_PRECISION" \
        --eval-images "$VAE_EVAL" --force "${extra[@]}"
fi
if stage init && [[ ! -d "$WORK/init" ]]; then
    $SANA shapes build "$WORK/init" --video --vae "$VAE" --seed 0 --dtype fp32
fi
if stage data && [[ ! -f "$WORK/data/metadata.jsonl" ]]; then
    $SANA shapes make "$WORK/data" --video --num "$NUM" --seed 0 --format "$FORMAT"
fi
if stage train; then
    extra=()
    [[ -f "$WORK/run/train_config.json" ]] && extra+=(--resume)
    [[ "$COMPILE" == 1 ]] && extra+=(--compile)
    $SANA finetune "$WORK/data" --model "$WORK/init" --init random --out "$WORK/run" --cache "$WORK/cache" "${extra[@]}" \
        --steps "$STEPS" --max-minutes "$MINUTES" --batch-size "$BATCH" --lr 5e-4 --warmup 500 --lr-schedule cosine --ema 0.999 \
        --caption-dropout 0.1 --no-gradient-checkpointing --checkpoint-every 1000 --keep 2 --log-every 50 \
        --save-dtype fp16 --val-prompt "a large red circle moving right on a white background" --val-every 5000
fi
if stage score; then
    $SANA shapes score --video --model "$WORK/run/model" --num "$SCORE_NUM" --seed 0 --out "$WORK/grid.gif" \
        --rows "$WORK/rows.jsonl" --force | tee "$WORK/score.txt"
fi
if stage ship; then
    rm -rf "$SHIP"
    $SANA shapes build "$SHIP" --video --vae "$WORK/init/vae" --transformer "$WORK/run/model" --dtype fp16
    $SANA shapes score --video --model "$SHIP" --num "$SCORE_NUM" --seed 0 --out "$WORK/shipped-grid.gif" --force \
        | tee "$WORK/shipped-score.txt"
fi
