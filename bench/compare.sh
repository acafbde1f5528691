#!/usr/bin/env bash
# `make bench-tools`: baton beside the tools users would pick instead, on the same data
# and the same S3 server (s3s-fs, disk-backed, on 127.0.0.1), in one run, repetitions
# interleaved. Writes docs/benchmarks-tools.md (overwritten) and bench-out/tools/.
#
# Knobs (environment):
#   BENCH_MB     checkpoint size in MiB, split over weights and two Adam moments (2048)
#   BENCH_REPS   repetitions of every measurement; the median is reported        (3)
#   BATON        the binary to measure                (target/release/baton)
#   TOOLS        which to run, space-separated
#                (limits baton aws aws-tuned tarzstd rclone restic incremental latency flush throughput)
#   RTTS         round trips added for the latency rows, in ms (20 50)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

BENCH_MB=${BENCH_MB:-2048}
BENCH_REPS=${BENCH_REPS:-3}
BATON=${BATON:-$ROOT/target/release/baton}
TOOLS=${TOOLS:-"limits baton aws aws-tuned tarzstd rclone restic incremental latency flush throughput"}
RTTS=${RTTS:-"20 50"}
OUT=$ROOT/bench-out/tools
DATA=$OUT/ckpt
DATA2=$OUT/ckpt2
INC=$OUT/inc
SRV=$OUT/server
BIN=$ROOT/bench-out/bin
REPORT=${BENCH_REPORT:-$ROOT/docs/benchmarks-tools.md}
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

# The stamp holds the size the data was made for: data of another size is made again.
make_data() {
    local stamp=$OUT/.made-ckpt
    [[ -f $stamp && $(<"$stamp") == "$BENCH_MB" ]] && return
    rm -rf "$DATA" "$DATA2" "$stamp" "$OUT/.made-ckpt2" && mkdir -p "$DATA"
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
    echo "$BENCH_MB" >"$stamp"
}

# The second checkpoint: the weights with 5% changed (the last 5%, as when only the
# head is trained), and new optimizer state.
make_data2() {
    local stamp=$OUT/.made-ckpt2
    [[ -f $stamp && $(<"$stamp") == "$BENCH_MB" ]] && return
    rm -rf "$DATA2" && mkdir -p "$DATA2"
    say "generating the second checkpoint"
    "$PY" - "$DATA" "$DATA2" <<'EOF2'
import sys, numpy as np
src, out = sys.argv[1], sys.argv[2]
w = np.fromfile(f"{src}/weights.bin", dtype="<f4")
k = len(w) * 95 // 100
w[k:] *= np.float32(1.01)
w.tofile(f"{out}/weights.bin")
rng = np.random.default_rng(99)
for name, scale in (("exp_avg.bin", 1e-3), ("exp_avg_sq.bin", 1e-6)):
    x = np.fromfile(f"{src}/{name}", dtype="<f4")
    x = (x * np.float32(0.9) + np.float32(scale) * rng.standard_normal(len(x)).astype("<f4"))
    if name == "exp_avg_sq.bin":
        x = np.abs(x)
    x.tofile(f"{out}/{name}")
EOF2
    echo "$BENCH_MB" >"$stamp"
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
    incremental)
        # The second checkpoint after the first: only what changed should travel.
        reset_bucket
        "$BATON" -q run --store "s3://$BUCKET/baton" --run-id inc1 --dir "$DATA" -- true >>"$OUT/log.txt" 2>&1
        measure "baton" inc "$BATON" -q run --store "s3://$BUCKET/baton" --run-id inc2 --dir "$DATA2" -- true
        # restic, from one path whose contents change, as a job's checkpoint directory does.
        restic init -q >>"$OUT/log.txt" 2>&1
        rm -rf "$INC" && cp -al "$DATA" "$INC"
        restic backup -q "$INC" >>"$OUT/log.txt" 2>&1
        rm -rf "$INC" && cp -al "$DATA2" "$INC"
        measure "restic backup" inc restic backup -q "$INC"
        rm -rf "$INC"
        ;;
    latency)
        # A proxy that delays every byte by half the round trip each way (no tc netem here).
        local rtt port proxy
        for rtt in $RTTS; do
            port=$((PORT + 100 + rtt))
            "$ROOT/target/release/examples/delay_proxy" "$port" "127.0.0.1:$PORT" "$rtt" >>"$OUT/log.txt" 2>&1 &
            proxy=$!
            sleep 0.3
            reset_bucket
            AWS_ENDPOINT_URL=http://127.0.0.1:$port measure "baton" "up@${rtt}ms" "$BATON" -q run --store "s3://$BUCKET/baton" --run-id r1 --dir "$DATA" -- true
            r=$(restore_dir)
            AWS_ENDPOINT_URL=http://127.0.0.1:$port measure "baton" "down@${rtt}ms" "$BATON" -q restore --store "s3://$BUCKET/baton" r1 --to "$r/ckpt"
            check_restored "$r" "baton @${rtt} ms"
            sed "s#endpoint = http://127.0.0.1:$PORT#endpoint = http://127.0.0.1:$port#" "$RCLONE_CONF" >"$RCLONE_CONF.$rtt"
            reset_bucket
            measure "rclone copy" "up@${rtt}ms" rclone --config "$RCLONE_CONF.$rtt" copy "$DATA" "s3s:$BUCKET/rclone" --transfers 8
            r=$(restore_dir)
            measure "rclone copy" "down@${rtt}ms" rclone --config "$RCLONE_CONF.$rtt" copy "s3s:$BUCKET/rclone" "$r" --transfers 8 --low-level-retries 1
            check_restored "$r" "rclone @${rtt} ms"
            kill "$proxy" 2>/dev/null; wait "$proxy" 2>/dev/null || true
        done
        ;;
    flush)
        # SIGTERM to a durable manifest, 95% of 1 GiB unchanged (bench/flush.py), on a
        # directory store and on the S3 server; one repetition per call.
        reset_bucket
        rm -rf "$OUT/flush"
        "$PY" "$ROOT/bench/flush.py" "$BATON" "$OUT/flush/store" "${FLUSH_MB:-1024}" 1 "$OUT/flush/work" 2>>"$OUT/log.txt" |
            head -1 | sed 's/^/dir\t/' >>"$OUT/flush.tsv"
        "$PY" "$ROOT/bench/flush.py" "$BATON" "s3://$BUCKET/flush" "${FLUSH_MB:-1024}" 1 "$OUT/flush/work-s3" 2>>"$OUT/log.txt" |
            head -1 | sed 's/^/s3\t/' >>"$OUT/flush.tsv"
        rm -rf "$OUT/flush"
        ;;
    throughput)
        # A CPU-bound trainer's throughput under baton against bare (bench/throughput.py).
        rm -rf "$OUT/tp"
        "$PY" "$ROOT/bench/throughput.py" "$BATON" "$OUT/tp/store" "${THROUGHPUT_MB:-512}" "${THROUGHPUT_EPOCHS:-6}" 1 "$OUT/tp" \
            2>>"$OUT/log.txt" | head -1 >>"$OUT/throughput.jsonl"
        rm -rf "$OUT/tp"
        ;;
    *) die "unknown tool $tool" ;;
    esac
}

# --- report ----------------------------------------------------------------------------

report() {
    FLUSH_MB=${FLUSH_MB:-1024} THROUGHPUT_MB=${THROUGHPUT_MB:-512} BENCH_COMMAND=${BENCH_COMMAND:-} \
        "$PY" "$ROOT/bench/report_tools.py" "$RESULTS" "$BENCH_MB" "$BENCH_REPS" "$REPORT" "$(git rev-parse --short HEAD)" "$TOOLS"
}

main() {
    command -v bc >/dev/null || die "needs bc"
    mkdir -p "$OUT"
    install_tools
    make_data
    [[ " $TOOLS " != *" incremental "* ]] || make_data2
    [[ " $TOOLS " != *" latency "* ]] || [[ -x $ROOT/target/release/examples/delay_proxy ]] ||
        cargo build -q --release --example delay_proxy
    write_configs
    start_server
    : >"$RESULTS"
    : >"$OUT/log.txt"
    : >"$OUT/flush.tsv"
    : >"$OUT/throughput.jsonl"
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
