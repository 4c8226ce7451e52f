#!/usr/bin/env bash
# The GPU measurements and runs NOTES.md ("GPU work still to run") lists as not yet done, in order of value, one
# after another, each under its own time limit and with its own log. Meant to run detached on a CUDA machine
# (`setsid nohup bash scripts/gpu_pending.sh WORK &`): a second call while one runs says so and leaves it; a call
# after one ended skips the jobs that finished (WORK/NAME.rc holds 0) and runs the rest.
#
#   bash scripts/gpu_pending.sh WORK [JOB...]       # default: the jobs still to run (DEFAULT below), in order
#   bash scripts/gpu_pending.sh WORK --list         # the jobs and their state
#
# Jobs:
#   lora-video     issue 20: SANA-Video 2B 480p 81-frame LoRA step beside diffusers' recipe (~2 min)
#   temporal-conv  issue 15: the temporal conv kernel's GPU tests and launch-shape sweep against cuDNN (~2 min)
#   first-image    issue 21: the pipeline's GPU tests, then a fresh `sana gen` process's first image, beside a bare
#                  `import torch` (~4 min)
#   bench-video    issue 15: the video DiT against diffusers, in alternating rounds (~2 min)
#   rl             issue 17: two nano RL runs side by side from the shipped model, 20-step and 4-step
#                  rollouts, both training the 20-step sampler's noise levels
#                  (RL_MINUTES of training, default 12; each resumes by itself if cut short), then their scores;
#                  WORK/rl-run.tgz.* and WORK/rl-fast-run.tgz.* carry them to another machine
#                  (`cat WORK/rl-run.tgz.* | tar -xz -C WORK` there before the next call)
#   rl-recipe      issue 17: train_nano.sh's two RL stages at their defaults (the CPU recipe), from RL_BASE (a pre-RL
#                  nano model folder; default the shipped, already RL'd one), and the same with
#                  RL_TRAIN_GRID_STEPS=20, side by side; then their scores (~8 min);
#                  WORK/rl-recipe-*.tgz carry the records (the DiTs are WORK/rl-recipe-*/rl2/{model,best})
#   rl-shift       issue 17: chains of RL stages from the shipped model, side by side, one chain per entry of
#                  RL_SHIFTS (default "10 15 10x4+10"; a stage is SHIFT[xSTEPS], rollouts at STEPS, default 20;
#                  '+' starts the next stage from the last one's best round; CHAIN@FOLDER starts from that model
#                  folder, not the shipped one), RL_MINUTES (default 6) a stage, each
#                  stage's best scored at 20 and 4 steps; WORK/rl-shift-CHAIN.tgz carry the records and the last
#                  stage's best DiT (fp16, ~10 MB)
#   levers         issue 23: the 1.6B DiT's step with the block levers of 2026-12-06 on and off, one process (~2 min)
#   linear-residual issue 23: the GEMM with the gated residual in its epilogue: its GPU tests and the 1.6B parity
#                  with it, its launch-shape sweep and table against cuBLAS + the residual pass, and the DiT's step
#                  with it off / "residual" / "all" in one process (~6 min)
#   profile-image  issue 23: where the 1.6B DiT's denoising step spends its GPU time at 1024 and 4096 px (~2 min)
#   gpu-tests      the GPU tests of first-image, decoder-bias and text-attention alone (they need no quiet GPU, so
#                  they can run beside the RL jobs; those jobs skip them once it passed in WORK, or with
#                  PENDING_TESTS=0)
#   world-fp8      issue 16/23: SANA-WM fp8 parity at the released config and the bench's fp8 note (~3 min)
#   finetune-image issue 23: SANA 1.6B LoRA step at 1024 px, eager and compiled, beside diffusers' recipe (~4 min)
#   bench-image    issue 23: the 1.6B DiT at 1024, 2048 and 4096 px and Sprint at 1024 px, beside diffusers (~10 min)
#   block-boundary issue 23: the GPU tests of the image DiT with each block's last residual add computing the next
#                  block's first norm (fp8 forms, parity with diffusers at the real configs, the pipeline; ~5 min)
#   text-attention issue 23: the cross-attention kernel's GPU tests, its launch-shape sweep and table against SDPA
#                  (~3 min)
#   prompt-keys    issue 23: the prompt rows cut after the batch's last real token, as the pipelines cut them: the
#                  GPU tests (graphs of other prompt lengths sharing one pool), the step with a 120-token prompt
#                  beside the full 300 (`sana bench`), and prompt to image after load (~5 min)
#   generate       issue 23: prompt to image after load at 1024 and 4096 px beside diffusers (the text encoder's
#                  graphs, the decoder's deferred biases; ~4 min)
#   decoder-bias   issue 23/21: the DC-AE decoder with each conv's bias deferred to the Triton pass after it and the
#                  multiscale projections fused: GPU tests against diffusers, then its decode time (~2 min)
# Environment: PYTHON (default python3), PENDING_TESTS (0: the timing jobs skip their tests). The CLI runs as
# `$PYTHON -m sana_cli` from the repository root; diffusers must be importable (PYTHONPATH).
set -uo pipefail
WORK=${1:?usage: gpu_pending.sh WORK [JOB...|--list]}
shift
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
PENDING_TESTS=${PENDING_TESTS:-1}
ALL=(lora-video temporal-conv first-image bench-video rl rl-recipe rl-shift gpu-tests world-fp8 finetune-image
     bench-image text-attention decoder-bias generate block-boundary profile-image levers prompt-keys linear-residual)
# lora-video, the temporal conv's sweep, bench-video and world-fp8 ran on 2026-12-05, gpu-tests, first-image,
# decoder-bias, generate, text-attention, finetune-image, bench-image, block-boundary, profile-image, levers,
# rl-shift, prompt-keys and linear-residual on 2026-12-06 (BENCHMARKS.md, NOTES.md); name a job to run it again.
DEFAULT=(generate)
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
cd "$ROOT"
export HF_HUB_OFFLINE=1

state() {  # done, failed (rc), or to run
    if [[ -f "$WORK/$1.rc" ]]; then
        local rc; rc=$(cat "$WORK/$1.rc")
        [[ "$rc" == 0 ]] && echo "done" || echo "failed (rc $rc)"
    else
        echo "to run"
    fi
}

if [[ "${1:-}" == "--list" ]]; then
    for job in "${ALL[@]}"; do printf '%-15s %s\n' "$job" "$(state "$job")"; done
    exit 0
fi
jobs_to_run=("$@")
[[ ${#jobs_to_run[@]} == 0 ]] && jobs_to_run=("${DEFAULT[@]}")
for job in "${jobs_to_run[@]}"; do
    [[ " ${ALL[*]} " == *" $job "* ]] || { echo "error: unknown job $job (jobs: ${ALL[*]})" >&2; exit 2; }
done

exec 9> "$WORK/.lock"
if ! flock -n 9; then
    echo "a gpu_pending.sh run is already working in $WORK (its progress: $WORK/pending.log)"
    exit 0
fi

say() { echo "$(date +%H:%M:%S) $*" | tee -a "$WORK/pending.log"; }

timed() {  # NAME SECONDS COMMAND...: run under a time limit, log to WORK/NAME.log
    local name=$1 seconds=$2
    shift 2
    say "$name: $*"
    timeout -s TERM -k 30 "$seconds" "$@" >> "$WORK/$name.log" 2>&1
}

rl_run() {  # FOLDER ROLLOUT_STEPS: one nano RL run in WORK/FOLDER (skipped once exported), packed to carry
    local folder=$1 rollout=$2
    [[ -f "$WORK/$folder/rl/model/model_index.json" ]] && return 0
    SANA="$PYTHON -m sana_cli" RL_BASE=nano RL_LR=${RL_LR:-1e-5} RL_ROUNDS=${RL_ROUNDS:-400} \
        RL_MINUTES=${RL_MINUTES:-12} RL_SAMPLING_STEPS=4 RL_ROLLOUT_STEPS=$rollout RL_MIX_GUIDANCE= \
        RL_PROMPTS=32 RL_CANDIDATES=32 RL_KEEP=16 RL_POOL=${RL_POOL:-1} RL_TRAIN_GRID_STEPS=20 \
        RL_TIMESTEP_FRACTION=${RL_TIMESTEP_FRACTION:-0.2} RL_VAL_COUNT=${RL_VAL_COUNT:-96} timed "$folder" \
        "${RL_SECONDS:-1000}" bash scripts/train_nano.sh "$WORK/$folder" rl
    local rc=$?
    rm -f "$WORK/$folder".tgz.*
    tar -C "$WORK" -cz --exclude="$folder/rl/cache" --exclude="$folder/rl/checkpoints" "$folder" \
        | split -b 15m - "$WORK/$folder.tgz."
    return $rc
}

rl_recipe() {  # VARIANT [ENV...]: both RL stages and their scores in WORK/rl-recipe-VARIANT, records packed
    local variant=$1 folder="$WORK/rl-recipe-$1"
    shift
    (
        export "$@" SANA="$PYTHON -m sana_cli" RL_BASE="${RL_BASE:-nano}" RL_SCORE_BEFORE=0
        for stage in rl rl2 rl-score; do
            timed "rl-recipe-$variant" 900 bash scripts/train_nano.sh "$folder" "$stage" || exit 1
        done
    ) || return 1
    tar -C "$WORK" -cz "rl-recipe-$variant/rl/rewards.csv" \
        "rl-recipe-$variant/rl2/rewards.csv" "rl-recipe-$variant/rl/train_config.json" \
        "rl-recipe-$variant/rl2/train_config.json" $(cd "$WORK" && ls "rl-recipe-$variant"/rl-*.txt) \
        > "$WORK/rl-recipe-$variant.tgz"
}

rl_shift() {  # CHAIN: RL stages from the shipped model in WORK/rl-shift-CHAIN/stageK, one after another, each
    # from the previous one's best validated round; CHAIN is SHIFT[xSTEPS] stages joined by '+' (rollouts at STEPS,
    # default 20). Each stage's best round is scored at 20 and 4 steps; its records and DiT are packed.
    local chain=${1%@*} base=nano k=0 stage
    [[ "$1" == *@* ]] && base=${1#*@}
    local name=rl-shift-$chain
    [[ "$base" != nano ]] && name=$name-from-$(basename "$base")
    local folder="$WORK/$name"
    for stage in ${chain//+/ }; do
        k=$((k + 1))
        local shift=${stage%x*} steps=20 out="$folder/stage$k"
        [[ "$stage" == *x* ]] && steps=${stage#*x}
        (
            export SANA="$PYTHON -m sana_cli" RL_BASE=$base RL_DEVICE=cuda RL_FLOW_SHIFT=$shift \
                RL_SAMPLING_STEPS=$steps RL_LR=${RL_LR:-1.5e-5} RL_MIX_GUIDANCE=${RL_MIX_GUIDANCE-} \
                RL_ROUNDS=${RL_ROUNDS:-60} RL_MINUTES=${RL_MINUTES:-6} RL_VAL_COUNT=${RL_VAL_COUNT:-96}
            timed "$name" 900 bash scripts/train_nano.sh "$out" rl
        ) || return 1
        base="$out/rl/best"
        [[ -d "$base" ]] || base="$out/rl/model"
        local pids=() score
        for score in 20 4; do
            $PYTHON -m sana_cli shapes score --model "$base" --num 200 --seed 0 --steps "$score" \
                > "$out/rl-best-${score}steps.txt" 2>> "$WORK/$name.log" & pids+=($!)
        done
        for pid in "${pids[@]}"; do wait "$pid" || return 1; done
        say "$name stage $k ($stage): $(grep -h 'held-out' "$out"/rl-best-*steps.txt | tr '\n' ' ')"
    done
    tar -C "$WORK" -cz $(cd "$WORK" && ls "$name"/stage*/rl/rewards.csv "$name"/stage*/rl/train_config.json \
        "$name"/stage*/rl-*.txt "$name"/stage*/rl/best/best.json 2>/dev/null) \
        $(cd "$WORK" && ls "$name/stage$k"/rl/best/transformer/* "$name/stage$k"/rl/best/scheduler/* 2>/dev/null) \
        > "$WORK/$name.tgz"
}

tests_done() { [[ "$PENDING_TESTS" == 0 || "$(state gpu-tests)" == done ]]; }

gpu_tests() {  # the tests of first-image, decoder-bias and text-attention
    case $1 in
    first-image)
        timed "$2" 300 "$PYTHON" -m pytest -q -p no:cacheprovider -rf tests/test_gpu_pipeline.py \
            tests/test_load_warm.py tests/test_text_context.py tests/test_text_graphs.py \
            tests/test_pipeline_recovery.py ;;
    decoder-bias)
        timed "$2" 300 "$PYTHON" -m pytest -q -p no:cacheprovider -rf tests/kernels/test_bias_act.py \
            tests/kernels/test_upsample.py tests/kernels/test_multiscale.py \
            "tests/test_dcae.py::test_gpu_real_config_bf16_matches_diffusers" ;;
    text-attention)
        timed "$2" 300 "$PYTHON" -m pytest -q -p no:cacheprovider -rf tests/kernels/test_text_attention.py \
            tests/test_gpu_parity.py -k "matches_diffusers and text-attention-kernel" ;;
    block-boundary)
        timed "$2" 420 "$PYTHON" -m pytest -q -p no:cacheprovider -rf tests/test_fp8_model.py \
            tests/kernels/test_modulation.py tests/test_gpu_parity.py tests/test_gpu_pipeline.py ;;
    esac
}

run_job() {
    case $1 in
    lora-video)
        timed lora-video 480 "$PYTHON" scripts/bench_finetune_video.py --diffusers ;;
    temporal-conv)
        timed temporal-conv 300 "$PYTHON" -m pytest -q -p no:cacheprovider -rf tests/kernels/test_temporal_conv.py \
            && timed temporal-conv 300 "$PYTHON" -m sana.kernels.temporal_conv.bench --sweep ;;
    first-image)
        # the pipeline's GPU tests first (the first steps beside the decoder's warm-up), then the measurement
        tests_done || gpu_tests first-image first-image
        timed first-image 480 "$PYTHON" scripts/bench_first_image.py --runs 4 --folder "$WORK/first" \
            --trace "$WORK/startup-trace.txt" --markdown "$WORK/first-image.md" ;;
    bench-video)
        timed bench-video 420 "$PYTHON" -m sana_cli bench --video --no-compile --no-kernels ;;
    rl)
        # the proof runs NOTES.md ("RL fine-tuning") proposes, side by side, from the shipped nano model, both
        # training the 20-step sampler's noise levels (4 of its 20 a sample): 20-step rollouts (the default
        # sampler's own failures), and 4-step rollouts (cheaper, more rounds); each run's best round is chosen on 96
        # validation prompts. A stop by the time limit
        # exports what is trained (the best validation is kept in rl/best); then both are scored.
        rl_run rl-run 20 & local full=$!
        rl_run rl-fast-run 4 & local fast=$!
        wait "$full" || return 1
        wait "$fast" || return 1
        local folder pids=()
        for folder in rl-run rl-fast-run; do
            SANA="$PYTHON -m sana_cli" RL_BASE=nano RL_SCORE_BEFORE=0 timed "$folder-score" 900 \
                bash scripts/train_nano.sh "$WORK/$folder" rl-score & pids+=($!)
        done
        for pid in "${pids[@]}"; do wait "$pid" || return 1; done ;;
    rl-shift)
        # the RL chains of RL_SHIFTS side by side, every sampler of a stage (rollouts, loss, validation) at its
        # shift; then their scores
        local shift pids=()
        for shift in ${RL_SHIFTS:-10 15 10x4+10}; do
            rl_shift "$shift" & pids+=($!)
        done
        for pid in "${pids[@]}"; do wait "$pid" || return 1; done ;;
    rl-recipe)
        rl_recipe defaults RL_DEVICE=cuda & local plain=$!
        rl_recipe grid20 RL_DEVICE=cuda RL_TRAIN_GRID_STEPS=20 & local grid=$!
        wait "$plain" && wait "$grid" ;;
    block-boundary)
        gpu_tests block-boundary block-boundary ;;
    levers)
        timed levers 300 "$PYTHON" scripts/bench_dit_levers.py --px 1024 --px 4096 ;;
    linear-residual)
        timed linear-residual 300 "$PYTHON" -m pytest -q -p no:cacheprovider -rf tests/kernels/test_linear_residual.py \
                tests/test_gpu_parity.py -k "linear_residual or linear-residual" \
            ; timed linear-residual 360 "$PYTHON" -m sana.kernels.linear_residual.bench --sweep \
                --shapes attn-out-1024 ffn-point-1024 attn-out-4096 ffn-point-4096 attn-out-sprint \
            ; timed linear-residual 120 "$PYTHON" -m sana.kernels.linear_residual.bench \
            ; timed linear-residual 300 "$PYTHON" scripts/bench_dit_levers.py --lever linear-residual \
                --px 1024 --px 2048 --px 4096 ;;
    profile-image)
        timed profile-image 200 "$PYTHON" scripts/profile_dit.py image --px 1024 \
            && timed profile-image 200 "$PYTHON" scripts/profile_dit.py image --px 4096 ;;
    gpu-tests)
        local rc=0 name
        for name in first-image decoder-bias text-attention; do gpu_tests "$name" gpu-tests || rc=1; done
        return $rc ;;
    world-fp8)
        timed world-fp8 300 "$PYTHON" -m pytest -q -p no:cacheprovider -rf tests/test_gpu_world_parity.py -k fp8 \
            && timed world-fp8 420 "$PYTHON" -m sana_cli bench --world --no-compile --no-kernels ;;
    finetune-image)
        timed finetune-image 540 "$PYTHON" scripts/bench_finetune.py --diffusers --compile ;;
    bench-image)
        timed bench-image 600 "$PYTHON" -m sana_cli bench -m sana-1.6b --px 1024 --px 2048 --px 4096 --no-kernels \
            && timed bench-image 300 "$PYTHON" -m sana_cli bench -m sprint-1.6b --px 1024 ;;
    text-attention)
        { tests_done || gpu_tests text-attention text-attention; } \
            && timed text-attention 300 "$PYTHON" -m sana.kernels.text_attention.bench --sweep \
            && timed text-attention 120 "$PYTHON" -m sana.kernels.text_attention.bench ;;
    decoder-bias)
        { tests_done || gpu_tests decoder-bias decoder-bias; } \
            && timed decoder-bias 240 "$PYTHON" scripts/bench_decoder.py ;;
    prompt-keys)
        timed prompt-keys 300 "$PYTHON" -m pytest -q -p no:cacheprovider -rf tests/test_text_context.py \
            && timed prompt-keys 300 "$PYTHON" -m sana_cli bench -m sana-1.6b --px 1024 --px 4096 --no-kernels \
                --no-compile --markdown "$WORK/prompt-keys.md" \
            && timed prompt-keys 480 "$PYTHON" -m sana_cli bench --generate -m sana-1.6b --px 1024 --px 4096 \
                --no-compile --markdown "$WORK/prompt-keys.md" ;;
    generate)
        timed generate 480 "$PYTHON" -m sana_cli bench --generate -m sana-1.6b --px 1024 --px 4096 --no-compile ;;
    esac
}

say "start: ${jobs_to_run[*]} on $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n1)"
for job in "${jobs_to_run[@]}"; do
    if [[ "$(state "$job")" == done ]]; then
        say "$job: done before, skipped"
        continue
    fi
    rm -f "$WORK/$job.rc"
    started=$(date +%s)
    run_job "$job"
    rc=$?
    echo "$rc" > "$WORK/$job.rc"
    say "$job: rc=$rc in $(( $(date +%s) - started )) s"
done
say "end"
