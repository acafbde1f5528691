#!/usr/bin/env bash
# `make gpu-check`: the torch example on a real GPU (issue 13, part 4), under 8 minutes on
# one GPU machine. Writes docs/gpu.md. Needs .venv (make venv) and target/release/baton.
#
#   A  examples/torch_trainer.py uninterrupted on the GPU (no baton): the reference.
#   B  under baton on the GPU, evicted after a commit; resumed on the CPU
#      (CUDA_VISIBLE_DEVICES=), evicted between commits; resumed on the GPU to the end.
#   C  under baton on the GPU only, evicted twice the same way: must be bit-exact with A.
#   D  scripts/gpu_big_trainer.py: GPU_CHECK_GIB (default 2) GiB of parameters, 3x with
#      Adam, SIGTERM; seconds to a durable manifest = trainer save + commit + baton flush.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
PY=${GPU_CHECK_PY:-$ROOT/.venv/bin/python}
# A GPU machine may have torch in its system python and no .venv.
[[ -x $PY ]] || PY=$(command -v python3)
BATON=$ROOT/target/release/baton
W=${GPU_CHECK_DIR:-$ROOT/target/gpu-check}
GIB=${GPU_CHECK_GIB:-2}
ARGS=(--epochs 3 --commit-every 10 --step-seconds 0.05)
say() { printf 'gpu-check: %s\n' "$*" >&2; }
die() { printf 'gpu-check: FAILED: %s\n' "$*" >&2; exit 1; }

[[ -x $PY ]] || die "no python with torch: make venv"
[[ -x $BATON ]] || die "$BATON missing: cargo build --release"
"$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' || die "torch sees no GPU here"
GPU=$("$PY" -c 'import torch; print(torch.cuda.get_device_name(0))')
rm -rf "$W" && mkdir -p "$W"
say "GPU: $GPU; work directory $W"

# SIGTERM to the baton of a background job: bash may have exec'ed baton in the subshell.
term_baton() {
    if [[ $(cat "/proc/$1/comm" 2>/dev/null) == baton ]]; then kill -TERM "$1"
    else pkill -TERM -P "$1" -x baton || true; fi
}

# One baton attempt in a new slot directory; SIGTERM when stderr shows $4 (if given).
attempt() {   # store run env-assignment marker -> prints the slot directory
    local store=$1 run=$2 envset=$3 marker=${4:-} slot
    slot=$(mktemp -d "$W/slot-XXXX")
    ( cd "$slot" && env $envset "$BATON" run --store "$store" --run-id "$run" --vacate-window 120s -- \
        "$PY" "$ROOT/examples/torch_trainer.py" "${ARGS[@]}" >stdout.log 2>stderr.log ) &
    local pid=$!
    if [[ -n $marker ]]; then
        until grep -q "$marker" "$slot/stderr.log" 2>/dev/null; do
            kill -0 $pid 2>/dev/null || die "attempt ended before '$marker': $slot/stderr.log"
            sleep 0.05
        done
        term_baton $pid
    fi
    wait $pid || true
    echo "$slot"
}

start=$(date +%s)
say "A: uninterrupted on the GPU"
mkdir -p "$W/a" && (cd "$W/a" && "$PY" "$ROOT/examples/torch_trainer.py" "${ARGS[@]}" >stdout.log 2>stderr.log) || die "run A failed"

say "B: GPU, evicted; CPU, evicted; GPU to the end"
attempt "$W/store-b" b "" "committed epoch 0 step 10" >/dev/null
s=$(attempt "$W/store-b" b "CUDA_VISIBLE_DEVICES=" "committed epoch 1 step 10"); grep -q "device=cpu" "$s/stderr.log" || say "B2 did not report device=cpu"
B=$(attempt "$W/store-b" b "")

say "C: GPU, evicted twice, GPU to the end"
attempt "$W/store-c" c "" "committed epoch 0 step 10" >/dev/null
attempt "$W/store-c" c "" "committed epoch 1 step 10" >/dev/null
C=$(attempt "$W/store-c" c "")

COMPARE=$("$PY" - "$W/a/checkpoint/train.pt" "$B/checkpoint/train.pt" "$C/checkpoint/train.pt" "$W/a/stderr.log" "$B/stderr.log" <<'PYEOF'
import re, sys, torch
load = lambda p: torch.load(p, map_location="cpu", weights_only=True)["model"]
a, b, c = (load(p) for p in sys.argv[1:4])
def last_loss(path):
    found = re.findall(r"loss ([0-9.]+)", open(path).read())
    return float(found[-1]) if found else float("nan")
la, lb = last_loss(sys.argv[4]), last_loss(sys.argv[5])
def diff(x, y):
    m = max((x[k].double() - y[k].double()).abs().max().item() for k in x)
    r = max(((x[k].double() - y[k].double()).norm() / x[k].double().norm()).item() for k in x)
    exact = all(torch.equal(x[k], y[k]) for k in x)
    return exact, m, r
eb, mb, rb = diff(a, b); ec, mc, rc = diff(a, c)
print(f"| A: GPU, uninterrupted | yes | 0 | 0 | {la:.4f} |")
print(f"| B: GPU, CPU, GPU | {'yes' if eb else 'no'} | {mb:.3e} | {rb:.3e} | {lb:.4f} |")
print(f"| C: GPU only | {'yes' if ec else 'no'} | {mc:.3e} | {rc:.3e} | {la if ec else float('nan'):.4f} |")
# C must be bit-exact (same GPU, deterministic algorithms). B cannot be close in weights:
# its CPU segment draws dropout masks from the CPU generator, not CUDA's (the streams
# differ by design), so from the first CPU step it follows another trajectory. What B
# must show is that the resumed run trained on: its final loss within 25% of A's.
sys.exit(0 if ec and abs(lb - la) <= 0.25 * la else 3)
PYEOF
) && verdict=PASS || verdict=FAIL
say "weights: $verdict"

say "D: ${GIB} GiB of parameters (+Adam) on the GPU, SIGTERM to durable manifest"
slot=$(mktemp -d "$W/slot-big-XXXX")
( cd "$slot" && "$BATON" run --store "$W/store-d" --run-id big --vacate-window 600s -- \
    "$PY" "$ROOT/scripts/gpu_big_trainer.py" "$GIB" >stdout.log 2>stderr.log ) &
pid=$!
until grep -q "big: ready" "$slot/stderr.log" 2>/dev/null; do
    kill -0 $pid 2>/dev/null || die "big trainer ended early: $slot/stderr.log"; sleep 0.2
done
t_sig=$(date +%s.%N)
term_baton $pid
wait $pid || true
t_exit=$(date +%s.%N)
line=$(grep -o 'big: save_seconds=.*' "$slot/stderr.log" || true)
size=$(grep -o 'big: [0-9]* layers.*' "$slot/stderr.log" || true)
manifest=$(ls "$W/store-d/runs/big/checkpoints/"*.json 2>/dev/null | tail -1)
[[ -n $manifest && -n $line ]] || die "no durable checkpoint from run D: $slot/stderr.log"
t_manifest=$(stat -c %.Y "$manifest" 2>/dev/null || stat -c %Y "$manifest")
read -r save commit committed_at < <(sed -E 's/.*save_seconds=([0-9.]+) commit_seconds=([0-9.]+) committed_at=([0-9.]+).*/\1 \2 \3/' <<<"$line")
TIMES=$("$PY" -c "
s,c,ca,ts,tm,te=$save,$commit,$committed_at,$t_sig,$t_manifest,$t_exit
print(f'| {tm-ts:.1f} | {ca-ts-s-c:.1f} | {s:.1f} | {c:.1f} | {tm-ca:.1f} | {te-ts:.1f} |')")
secs=$(( $(date +%s) - start ))

cat > "$ROOT/docs/gpu.md" <<MD
# baton on a GPU: \`make gpu-check\`

Written by \`scripts/gpu_check.sh\` on $(date -u +%Y-%m-%d) in ${secs} s.
GPU: **$GPU**; torch $("$PY" -c 'import torch; print(torch.__version__, "CUDA", torch.version.cuda)').
Command: \`make gpu-check\` (\`GPU_CHECK_GIB=$GIB\`).

## Final weights of examples/torch_trainer.py against an uninterrupted GPU run

3 epochs, a commit every 10 steps, evicted by SIGTERM after a commit and between commits.

| Run | bit-exact with A | max abs diff | max relative L2 per tensor | final loss |
| --- | --- | --- | --- | --- |
$COMPARE

Verdict: **$verdict**. C must be bit-exact: one GPU model, deterministic algorithms,
every RNG state restored. B cannot be close in weights, and is not expected to be: its
CPU segment draws dropout masks from the CPU generator, whose stream differs from CUDA's
by design (and CPU kernels round float32 differently), so from its first CPU step it
follows another trajectory; B must train on to a final loss within 25% of A's (see
docs/pytorch.md, "what is bit-exact").

## SIGTERM to a durable manifest, $size

| to durable manifest (s) | signal to step boundary (s) | trainer save (s) | commit / capture (s) | baton flush after commit (s) | baton exited (s) |
| --- | --- | --- | --- | --- | --- |
$TIMES

Directory store on the local disk; the trainer saves with \`baton_ckpt.save_training_state\`
(GPU to CPU copy, torch.save, fsync, rename). Times from the check script's clock
(manifest file mtime).
MD
say "wrote docs/gpu.md ($verdict, ${secs} s)"
[[ $verdict == PASS ]]
