#!/usr/bin/env bash
# `make bench-tools`: baton beside the tools users would pick instead, on the same data
# and the same S3 server (s3s-fs, disk-backed, on 127.0.0.1), in one run, repetitions
# interleaved. Writes docs/benchmarks-tools.md (overwritten) and bench-out/tools/.
#
# Knobs (environment):
#   BENCH_MB     checkpoint size in MiB, split over weights and two Adam moments (2048)
#   BENCH_REPS   repetitions of every measurement; the median is reported        (3)
#   BATON        the binary to measure                (target/release/baton)
#   TOOLS        which to run, space-separated (baton aws aws-tuned tarzstd rclone restic limits)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

BENCH_MB=${BENCH_MB:-2048}
BENCH_REPS=${BENCH_REPS:-3}
BATON=${BATON:-$ROOT/target/release/baton}
TOOLS=${TOOLS:-"limits baton aws aws-tuned tarzstd rclone restic"}
OUT=$ROOT/bench-out/tools
DATA=$OUT/ckpt
SRV=$OUT/server
BIN=$ROOT/bench-out/bin
REPORT=$ROOT/docs/benchmarks-tools.md
PY=$ROOT/.venv/bin/python
AWS=$ROOT/.venv/bin/aws
PORT=${BENCH_PORT:-8915}
KEY=BENCHKEY
SECRET=benchsecretbenchsecret
BUCKET=bench

die() { echo "bench-tools: $*" >&2; exit 1; }
say() { echo "== $*" >&2; }

# --- set-up: tools, data, server ---------------------------------------------------------

install_tools() {
    mkdir -p "$BIN"
    if [[ ! -x $BIN/bin/s3s-fs ]]; then
        say "installing s3s-fs 0.14.1 (cargo, ~3 min)"
        cargo install -q s3s-fs@0.14.1 --features binary --locked --root "$BIN"
    fi
    local missing=()
    command -v rclone >/dev/null || missing+=(rclone)
    command -v restic >/dev/null || missing+=(restic)
    command -v zstd >/dev/null || missing+=(zstd)
    if ((${#missing[@]})); then
        local sudo=; ((EUID == 0)) || sudo=sudo
        say "installing ${missing[*]}"
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null ||
            { $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; }
    fi
    [[ -x $AWS ]] || "$ROOT/.venv/bin/pip" install -q --disable-pip-version-check -r bench/requirements.txt
    [[ -x $BATON ]] || die "no $BATON: run cargo build --release"
}

make_data() {
    local stamp=$OUT/.made-ckpt-$BENCH_MB
    [[ -f $stamp ]] && return
    rm -rf "$DATA" && mkdir -p "$DATA"
    say "generating $BENCH_MB MiB of float32 weights and Adam moments"
    "$PY" - "$DATA" "$BENCH_MB" <<'EOF'
import sys, numpy as np
out, mib = sys.argv[1], int(sys.argv[2])
n = mib * (1 << 20) // 4 // 3          # floats per file
rng = np.random.default_rng(20240611)
block = 1 << 22
for name, scale in (("weights.bin", 0.05), ("exp_avg.bin", 1e-3), ("exp_avg_sq.bin", 1e-6)):
    with open(f"{out}/{name}", "wb") as f:
        for s in range(0, n, block):
            k = min(block, n - s)
            i = np.arange(s, s + k, dtype=np.float64)
            x = scale * (np.sin(i * 1e-4) + 0.2 * rng.standard_normal(k))
            if name == "exp_avg_sq.bin":
                x = np.abs(x)
            f.write(x.astype("<f4").tobytes())
EOF
    touch "$stamp"
}

SERVER_PID=
start_server() {
    rm -rf "$SRV" && mkdir -p "$SRV/$BUCKET"
    "$BIN/bin/s3s-fs" --host 127.0.0.1 --port "$PORT" --access-key "$KEY" --secret-key "$SECRET" "$SRV" >"$OUT/s3s-fs.log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 50); do
        curl -s -o /dev/null "http://127.0.0.1:$PORT/" && return
        sleep 0.1
    done
    die "s3s-fs did not start (see $OUT/s3s-fs.log)"
}
stop_server() { [[ -n $SERVER_PID ]] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=; }
trap stop_server EXIT

# Empty the bucket between measurements: every upload starts from an empty server.
reset_bucket() { rm -rf "${SRV:?}/$BUCKET" && mkdir -p "$SRV/$BUCKET"; }

server_cpu() { awk '{print $14 + $15}' "/proc/$SERVER_PID/stat"; }

export AWS_ACCESS_KEY_ID=$KEY AWS_SECRET_ACCESS_KEY=$SECRET AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
export AWS_ENDPOINT_URL=http://127.0.0.1:$PORT AWS_ALLOW_HTTP=true
unset AWS_CA_BUNDLE # the machine's bundle variable breaks rclone's plain-HTTP client
export RESTIC_PASSWORD=bench RESTIC_REPOSITORY=s3:http://127.0.0.1:$PORT/$BUCKET/restic
RCLONE_CONF=$OUT/rclone.conf
AWS_TUNED=$OUT/aws-tuned.conf

write_configs() {
    cat >"$RCLONE_CONF" <<EOF
[s3s]
type = s3
provider = Other
access_key_id = $KEY
secret_access_key = $SECRET
endpoint = http://127.0.0.1:$PORT
region = us-east-1
EOF
    cat >"$AWS_TUNED" <<EOF
[default]
s3 =
  max_concurrent_requests = 16
  multipart_threshold = 64MB
  multipart_chunksize = 16MB
EOF
}

# --- one measurement -------------------------------------------------------------------

RESULTS=$OUT/results.tsv
# measure LABEL PHASE CMD...: wall, client CPU, peak RSS (GNU time), server CPU.
measure() {
    local label=$1 phase=$2
    shift 2
    local t0 s0 s1 tf=$OUT/time.txt
    s0=$(server_cpu)
    t0=$(date +%s.%N)
    if ! /usr/bin/time -f "%U %S %M" -o "$tf" "$@" >>"$OUT/log.txt" 2>&1; then
        echo "failed: $label $phase (see $OUT/log.txt)" >&2
        return 1
    fi
    local wall
    wall=$(echo "$(date +%s.%N) - $t0" | bc)
    s1=$(server_cpu)
    read -r u s m <"$tf"
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$label" "$phase" "$wall" "$(echo "$u + $s" | bc)" "$m" \
        "$(echo "($s1 - $s0) / 100" | bc -l)" >>"$RESULTS"
}

restore_dir() { rm -rf "$OUT/restored" && mkdir -p "$OUT/restored" && echo "$OUT/restored"; }

check_restored() {
    # Every tool must give back the same bytes: compared with cmp, not trusted.
    local from=$1
    for f in weights.bin exp_avg.bin exp_avg_sq.bin; do
        local got
        got=$(find "$from" -name "$f" -type f | head -1)
        [[ -n $got ]] && cmp -s "$got" "$DATA/$f" || die "restore by $2 did not give back $f"
    done
}

run_tool() {
    local tool=$1 r
    case $tool in
    limits)
        measure "page-cache read (cat)" - sh -c "cat $DATA/*.bin > /dev/null"
        measure "openssl dgst -sha256" - sh -c "openssl dgst -sha256 $DATA/*.bin > /dev/null"
        reset_bucket
        measure "raw PUT, 16 MiB objects, 8 streams, no hashing" up \
            "$PY" "$ROOT/bench/raw_s3.py" put "$DATA" "$BUCKET" raw 8
        measure "raw GET, 16 MiB objects, 8 streams, no hashing" down \
            "$PY" "$ROOT/bench/raw_s3.py" get "$OUT/restored-raw" "$BUCKET" raw 8
        ;;
    baton)
        reset_bucket
        measure "baton" up "$BATON" -q run --store "s3://$BUCKET/baton" --run-id r1 --dir "$DATA" -- true
        r=$(restore_dir)
        measure "baton" down "$BATON" -q restore --store "s3://$BUCKET/baton" r1 --to "$r/ckpt"
        check_restored "$r" baton
        ;;
    aws)
        reset_bucket
        measure "aws s3 cp --recursive (defaults)" up "$AWS" s3 cp --quiet --recursive "$DATA" "s3://$BUCKET/aws"
        r=$(restore_dir)
        measure "aws s3 cp --recursive (defaults)" down "$AWS" s3 cp --quiet --recursive "s3://$BUCKET/aws" "$r"
        check_restored "$r" aws
        ;;
    aws-tuned)
        reset_bucket
        measure "aws s3 cp --recursive (tuned)" up env AWS_CONFIG_FILE="$AWS_TUNED" "$AWS" s3 cp --quiet --recursive "$DATA" "s3://$BUCKET/aws"
        r=$(restore_dir)
        measure "aws s3 cp --recursive (tuned)" down env AWS_CONFIG_FILE="$AWS_TUNED" "$AWS" s3 cp --quiet --recursive "s3://$BUCKET/aws" "$r"
        check_restored "$r" aws-tuned
        ;;
    tarzstd)
        reset_bucket
        measure "tar | zstd -T0 -3 | aws s3 cp -" up sh -c \
            "tar -C '$DATA' -cf - weights.bin exp_avg.bin exp_avg_sq.bin | zstd -q -T0 -3 | AWS_CONFIG_FILE='$AWS_TUNED' '$AWS' s3 cp --quiet - s3://$BUCKET/tar/ckpt.tar.zst"
        r=$(restore_dir)
        measure "tar | zstd -T0 -3 | aws s3 cp -" down sh -c \
            "AWS_CONFIG_FILE='$AWS_TUNED' '$AWS' s3 cp --quiet s3://$BUCKET/tar/ckpt.tar.zst - | zstd -q -d -T0 | tar -C '$r' -xf -"
        check_restored "$r" tarzstd
        ;;
    rclone)
        reset_bucket
        measure "rclone copy" up rclone --config "$RCLONE_CONF" copy "$DATA" "s3s:$BUCKET/rclone" --transfers 8
        r=$(restore_dir)
        # s3s-fs answers HEAD on a prefix ("is the source a file?") with 500, which rclone
        # retries for ~90 s before going on: one low-level try skips that stall.
        measure "rclone copy" down rclone --config "$RCLONE_CONF" copy "s3s:$BUCKET/rclone" "$r" --transfers 8 --low-level-retries 1
        check_restored "$r" rclone
        ;;
    restic)
        reset_bucket
        restic init -q >>"$OUT/log.txt" 2>&1
        measure "restic backup" up restic backup -q "$DATA"
        r=$(restore_dir)
        measure "restic restore" down restic restore -q latest --target "$r"
        check_restored "$r" restic
        ;;
    *) die "unknown tool $tool" ;;
    esac
}

# --- report ----------------------------------------------------------------------------

report() {
    "$PY" "$ROOT/bench/report_tools.py" "$RESULTS" "$BENCH_MB" "$BENCH_REPS" "$REPORT" "$(git rev-parse --short HEAD)" "$TOOLS"
}

main() {
    command -v bc >/dev/null || die "needs bc"
    mkdir -p "$OUT"
    install_tools
    make_data
    write_configs
    start_server
    : >"$RESULTS"
    : >"$OUT/log.txt"
    for rep in $(seq "$BENCH_REPS"); do
        for tool in $TOOLS; do
            say "rep $rep: $tool"
            run_tool "$tool" || true
        done
    done
    report
    say "wrote $REPORT"
}

main "$@"
