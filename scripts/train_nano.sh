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
#   rl     reward fine-tuning of the trained DiT with the shapes reward (`sana finetune shapes:hard --rl --full`:
#          the Sol-RL recipe, CFG-free rollouts on prompts that are mostly held-out colour-shape pairs, the rest
#          two-object scenes: the whole grammar scores ~0.98 and soon gives equal rewards, no signal); a second call
#          resumes
#   rl-score  adherence of the model before and after RL (and of the best-validated round's, `rl/best`, when that
#          was not the last): default settings, CFG-free, and 4 steps
# The shipped model (sana/nano/model) is this recipe with the defaults below on one H100: 18,000 steps, final loss
# 0.048 (settings and loss log in assets/nano/dit-*). Its autoencoder came from `sana shapes train-vae DIR
# --steps 12000 --batch 32 --lr 1e-3 --seed 0 --max-minutes 6.7` (5,987 steps; 38.2 dB PSNR; assets/nano/vae-train.json)
# and is reused from the shipped model; VAE=DIR/vae uses another.
# Environment: SANA (the command, default `sana`), VAE (autoencoder folder, default sana/nano/model/vae),
# STEPS (DiT steps, default 18000), NUM (dataset size, default 20000), COMPILE (1: `--compile`, faster on a GPU
# once its ~1 minute of compilation is paid), MINUTES (`--max-minutes`: export what is trained by then; 0 = none).
# RL: RL_BASE (the model RL starts from, default WORK/run/model; `nano` for the shipped one), RL_ROUNDS (default
# 25, see below), RL_LR (default 5e-5), RL_PROMPTS (prompts a round, default 32), RL_CANDIDATES (default 32),
# RL_KEEP (default 16), RL_SOURCE (default shapes:hard; shapes for the whole grammar), RL_SAMPLING_STEPS (steps of
# every rollout, default 4: the 4-step target, and with exploration at the same steps in bf16 the kept images are
# the explored ones, so a round samples each image once), RL_MINUTES (`--max-minutes` of the RL stage; 0 = none), RL_GUIDANCE (CFG scale of the
# rollouts, default 1: CFG-free as the recipe), RL_POLICY_GUIDANCE (`--policy-guidance`: CFG scale of the sampler
# trained and exported; default RL_GUIDANCE), RL_MIX_GUIDANCE (`--mix-guidance`: the starting model samples every other candidate seed
# with this CFG scale; default none), RL_ROLLOUT_STEPS (steps of the full-quality rollouts when they
# differ from the exploration's, e.g. 20 for the default sampler's trajectories; default RL_SAMPLING_STEPS),
# RL_POOL (`--prompt-pool`: explore this many times RL_PROMPTS prompts a round and train on the most contested, so
# prompts whose seeds all score alike stop diluting the round once most are solved; default 1, every prompt),
# RL_SCORE_BEFORE (0: `rl-score` skips the base model, whose scores are known; default 1), RL_TIMESTEP_FRACTION
# (`--timestep-fraction`: the share of the rollout sampler's timesteps each image is trained on; default 1, every
# one), RL_VAL_COUNT (`--val-count`: validation prompts, each at a seed of its own; default 32; more make the kept
# best round less a matter of luck), RL_TRAIN_GRID_STEPS (`--train-grid-steps`: train at the noise levels of that
# many sampler steps instead of the rollouts'; e.g. 20 with 4-step rollouts, for the default 20-step sampler). The RL settings are untuned; what one H200 showed with these (RL_BASE=nano, 2026-12-04): ~2.65 s a round (~390 images/s), the 4-step CFG-free reward
# 0.96 -> 0.998 by round 25 and the validation reward (20 steps) 0.977 -> 0.995 at round 25, then a collapse from
# round ~30 at this learning rate (0.80 and 0.85 at round 50, the KL to the base rising throughout): hence 25 rounds.
set -euo pipefail
WORK=${1:?usage: train_nano.sh WORK [init|data|train|score|rl|rl-score]}
STAGE=${2:-all}
SANA=${SANA:-sana}
VAE=${VAE:-sana/nano/model/vae}
STEPS=${STEPS:-18000}
NUM=${NUM:-20000}
COMPILE=${COMPILE:-1}
MINUTES=${MINUTES:-0}
RL_BASE=${RL_BASE:-$WORK/run/model}
RL_ROUNDS=${RL_ROUNDS:-25}
RL_LR=${RL_LR:-5e-5}
RL_PROMPTS=${RL_PROMPTS:-32}
RL_CANDIDATES=${RL_CANDIDATES:-32}
RL_KEEP=${RL_KEEP:-16}
RL_SOURCE=${RL_SOURCE:-shapes:hard}
RL_SAMPLING_STEPS=${RL_SAMPLING_STEPS:-4}
RL_MINUTES=${RL_MINUTES:-0}
RL_GUIDANCE=${RL_GUIDANCE:-1}
RL_ROLLOUT_STEPS=${RL_ROLLOUT_STEPS:-$RL_SAMPLING_STEPS}
RL_POOL=${RL_POOL:-1}
RL_SCORE_BEFORE=${RL_SCORE_BEFORE:-1}
RL_TIMESTEP_FRACTION=${RL_TIMESTEP_FRACTION:-1}
RL_POLICY_GUIDANCE=${RL_POLICY_GUIDANCE:-$RL_GUIDANCE}
RL_MIX_GUIDANCE=${RL_MIX_GUIDANCE:-}
RL_VAL_COUNT=${RL_VAL_COUNT:-32}
RL_TRAIN_GRID_STEPS=${RL_TRAIN_GRID_STEPS:-}
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
if stage rl; then
    extra=()
    [[ -f "$WORK/rl/train_config.json" ]] && extra+=(--resume)
    [[ -n "$RL_MIX_GUIDANCE" ]] && extra+=(--mix-guidance "$RL_MIX_GUIDANCE")
    [[ -n "$RL_TRAIN_GRID_STEPS" ]] && extra+=(--train-grid-steps "$RL_TRAIN_GRID_STEPS")
    $SANA finetune "$RL_SOURCE" --rl --full --model "$RL_BASE" --out "$WORK/rl" --reward shapes "${extra[@]}" \
        --steps "$RL_ROUNDS" --max-minutes "$RL_MINUTES" --lr "$RL_LR" --prompts-per-round "$RL_PROMPTS" \
        --candidates "$RL_CANDIDATES" --keep "$RL_KEEP" --prompt-pool "$RL_POOL" --explore-steps "$RL_SAMPLING_STEPS" \
        --rollout-steps "$RL_ROLLOUT_STEPS" --timestep-fraction "$RL_TIMESTEP_FRACTION" --explore-precision bf16 --rollout-batch 256 \
        --guidance "$RL_GUIDANCE" --policy-guidance "$RL_POLICY_GUIDANCE" \
        --batch-size 128 --no-gradient-checkpointing --checkpoint-every 25 --keep-checkpoints 2 --val-count "$RL_VAL_COUNT" \
        --val-steps 20 --val-every 5 --save-dtype fp16
fi
if stage rl-score; then
    pairs=("after:$WORK/rl/model")
    [[ "$RL_SCORE_BEFORE" == 1 ]] && pairs=("before:$RL_BASE" "${pairs[@]}")
    [[ -d "$WORK/rl/best" ]] && pairs+=("best:$WORK/rl/best")  # the best-validated round, if not the last
    for pair in "${pairs[@]}"; do
        name=${pair%%:*} model=${pair#*:}
        # the four scores of a model side by side (one GPU holds them all); printed once all are done
        pids=()
        $SANA shapes score --model "$model" --num 200 --seed 0 --out "$WORK/rl-$name-grid.png" --force \
            --rows "$WORK/rl-$name-rows.jsonl" > "$WORK/rl-$name-default.txt" & pids+=($!)
        $SANA shapes score --model "$model" --num 200 --seed 0 --cfg 1 > "$WORK/rl-$name-cfg1.txt" & pids+=($!)
        $SANA shapes score --model "$model" --num 200 --seed 0 --steps 4 > "$WORK/rl-$name-4steps.txt" & pids+=($!)
        $SANA shapes score --model "$model" --num 200 --seed 0 --steps 4 --cfg 1 > "$WORK/rl-$name-4steps-cfg1.txt" &
        pids+=($!)
        for pid in "${pids[@]}"; do wait "$pid"; done  # a failed score stops the stage
        cat "$WORK/rl-$name-default.txt" "$WORK/rl-$name-cfg1.txt" "$WORK/rl-$name-4steps.txt" \
            "$WORK/rl-$name-4steps-cfg1.txt"
    done
fi
