#!/usr/bin/env bash
# `make bench`: upload and restore of a generated float32 checkpoint, to a directory
# store and to a local S3 server (s3s-fs, disk-backed, as in bench/compare.sh), next to `sha256sum` and `zstd -1` of the same
# bytes. Medians go to docs/benchmarks.md (overwritten) and to stdout.
#
# Knobs (environment):
#   BENCH_MB        checkpoint size in MiB                      (default 1024)
#   BENCH_SMALL_MB  smaller size, to show memory does not grow   (default BENCH_MB/4)
#   BENCH_REPS      repetitions of every measurement; median     (default 3)
#   BATON           the binary to measure                        (default target/release/baton)
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD

BENCH_MB=${BENCH_MB:-1024}
BENCH_SMALL_MB=${BENCH_SMALL_MB:-$((BENCH_MB >= 4 ? BENCH_MB / 4 : 1))}
BENCH_REPS=${BENCH_REPS:-3}
BATON=${BATON:-$ROOT/target/release/baton}

VENV=$ROOT/.venv
PY=$VENV/bin/python
OUT=$ROOT/bench-out
CKPT=$OUT/ckpt                 # the checkpoint directory baton captures
SMALL=$OUT/ckpt-small
RESULTS=$OUT/results.tsv
FACTS=$OUT/facts.txt
LOGS=$OUT/logs
ZST=$OUT/weights.bin.zst
REPORT=$ROOT/docs/benchmarks.md
BUCKET=bench
SERVER_PID=

die() { echo "bench: $*" >&2; exit 1; }
say() { echo "== $*"; }

# --- setup -------------------------------------------------------------------------

ensure_tools() {
    local missing=()
    command -v zstd >/dev/null || missing+=(zstd)
    command -v curl >/dev/null || missing+=(curl)
    command -v sha256sum >/dev/null || missing+=(coreutils)
    if ((${#missing[@]})); then
        command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get to install them"
        local sudo=; ((EUID == 0)) || sudo=sudo
        say "installing ${missing[*]}"
        $sudo apt-get update -qq
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

ensure_python() {
    if [[ ! -x $PY ]]; then
        python3 -m venv "$VENV"
        "$VENV/bin/pip" install -q --disable-pip-version-check -r requirements-test.txt
    fi
    if [[ ! -f $VENV/.bench-installed || bench/requirements.txt -nt $VENV/.bench-installed ]]; then
        "$VENV/bin/pip" install -q --disable-pip-version-check -r bench/requirements.txt
        touch "$VENV/.bench-installed"
    fi
}

ensure_baton() {
    [[ -x $BATON ]] || cargo build --release
    [[ -x $BATON ]] || die "$BATON is not there; run cargo build --release"
}

# gen_ckpt DIR MIB: DIR/weights.bin, regenerated only when the size or generator changed.
gen_ckpt() {
    local dir=$1 mib=$2 stamp=$1.stamp want
    want="$mib $(sha256sum bench/gen_ckpt.py | cut -c1-16)"
    if [[ -f $dir/weights.bin && -f $stamp && $(<"$stamp") == "$want" ]]; then
        return
    fi
    say "generating a $mib MiB float32 checkpoint in $dir"
    rm -rf "$dir" "$stamp"
    mkdir -p "$dir"
    "$PY" bench/gen_ckpt.py "$dir/weights.bin" "$mib"
    echo "$want" >"$stamp"
}

# --- the S3 server -------------------------------------------------------------------

S3S=$OUT/bin/bin/s3s-fs
S3S_DIR=$OUT/s3s-data
start_server() {
    if [[ ! -x $S3S ]]; then
        say "installing s3s-fs 0.14.1 (cargo, ~3 min)"
        cargo install -q s3s-fs@0.14.1 --features binary --locked --root "$OUT/bin"
    fi
    local port
    port=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    rm -rf "$S3S_DIR" && mkdir -p "$S3S_DIR/$BUCKET"
    "$S3S" --host 127.0.0.1 --port "$port" --access-key benchkey --secret-key benchsecretbenchsecret "$S3S_DIR" >"$OUT/s3s-fs.log" 2>&1 &
    SERVER_PID=$!
    export AWS_ENDPOINT_URL=http://127.0.0.1:$port AWS_ALLOW_HTTP=true
    export AWS_ACCESS_KEY_ID=benchkey AWS_SECRET_ACCESS_KEY=benchsecretbenchsecret AWS_REGION=us-east-1
    unset AWS_CA_BUNDLE
    for _ in $(seq 150); do
        curl -s -o /dev/null "$AWS_ENDPOINT_URL/" && return
        kill -0 "$SERVER_PID" 2>/dev/null || die "s3s-fs did not start; see $OUT/s3s-fs.log"
        sleep 0.2
    done
    die "s3s-fs did not answer on $AWS_ENDPOINT_URL"
}

stop_server() {
    if [[ -n $SERVER_PID ]]; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
        SERVER_PID=
    fi
}

# s3s-fs keeps objects as files: an empty bucket is an empty directory.
fresh_bucket() {
    rm -rf "${S3S_DIR:?}/$BUCKET" && mkdir -p "$S3S_DIR/$BUCKET"
}

# --- measuring -----------------------------------------------------------------------

# measure LABEL BYTES COMMAND...: time one run, append it to $RESULTS. For S3 labels the
# CPU time the S3 server used meanwhile is recorded too: it runs on the same cores.
measure() {
    local label=$1 bytes=$2 server=()
    shift 2
    [[ $label != s3-* ]] || server=(--server "$SERVER_PID")
    "$PY" bench/measure.py "$RESULTS" "$label" "$REP" "$bytes" "$LOGS/$label.$REP.log" "${server[@]}" -- "$@"
}

bench_baselines() {
    local f=$CKPT/weights.bin bytes=$1
    measure sha256sum "$bytes" sha256sum "$f"
    measure zstd-1 "$bytes" zstd -q -1 -T1 -c "$f"
    measure zstd-1-T0 "$bytes" zstd -q -1 -T0 -c "$f"
    measure zstd-d "$bytes" zstd -q -d -c "$ZST"
    # coreutils' sha256sum does not use the CPU's SHA instructions; OpenSSL (and baton) do.
    if command -v openssl >/dev/null; then
        measure openssl-sha256 "$bytes" openssl dgst -sha256 "$f"
    fi
    rm -f "$OUT/copy.bin"
    measure cp "$bytes" cp "$f" "$OUT/copy.bin"
    rm -f "$OUT/copy.bin"
}

# upload LABEL URL DIR BYTES RUN_ID [VAR=VALUE...]: `baton run` of a command that exits
# at once; baton captures DIR as the final checkpoint and uploads it before exiting.
upload() {
    local label=$1 url=$2 dir=$3 bytes=$4 run=$5
    shift 5
    measure "$label" "$bytes" env "$@" "$BATON" run --store "$url" --run-id "$run" --dir "$dir" --device cpu -- true
}

# restore LABEL URL DIR BYTES [VAR=VALUE...]: restore run `bench` and compare it with DIR.
restore() {
    local label=$1 url=$2 dir=$3 bytes=$4 restored=$OUT/restored
    shift 4
    rm -rf "$restored"
    measure "$label" "$bytes" env "$@" "$BATON" restore --store "$url" bench --to "$restored"
    cmp "$dir/weights.bin" "$restored/weights.bin" || die "$label: the restored file differs from the original"
    rm -rf "$restored"
}

# bench_store KIND URL: into an empty store, a first upload; the same bytes again under
# another run id (every chunk is already there: existence checks only); a restore.
bench_store() {
    local kind=$1 url=$2
    upload "$kind-upload" "$url" "$CKPT" "$BYTES" bench
    upload "$kind-upload-dedup" "$url" "$CKPT" "$BYTES" bench-again
    restore "$kind-restore" "$url" "$CKPT" "$BYTES"
}

# The same upload without compression (--zstd-level 0): what zstd costs baton.
bench_no_compression() {
    local store=$OUT/store-raw
    rm -rf "$store"
    measure dir-upload-raw "$BYTES" \
        "$BATON" run --store "$store" --run-id bench --dir "$CKPT" --device cpu --zstd-level 0 -- true
    rm -rf "$store"
}

# bench_memory DIR BYTES SUFFIX [VAR=VALUE...]: upload and restore through a fresh
# directory store, for peak RSS at another size or with another malloc setting.
bench_memory() {
    local dir=$1 bytes=$2 suffix=$3 store=$OUT/store-mem
    shift 3
    rm -rf "$store"
    upload "dir-upload$suffix" "$store" "$dir" "$bytes" bench "$@"
    restore "dir-restore$suffix" "$store" "$dir" "$bytes" "$@"
    rm -rf "$store"
}

# The checkpoint as one zstd -1 frame: its size, and the input of the `zstd -d` baseline.
make_zst() {
    zstd -q -f -1 -T0 "$CKPT/weights.bin" -o "$ZST"
    echo "zstd_bytes=$(stat -c %s "$ZST")" >>"$FACTS"
}

# What baton's chunks make of the same bytes (from the first directory-store upload).
record_sizes() {
    {
        echo "stored_bytes=$(du -sb --apparent-size "$OUT/store-dir/chunks" | cut -f1)"
        echo "chunks=$(find "$OUT/store-dir/chunks" -type f | wc -l)"
    } >>"$FACTS"
}

record_machine() {
    local commit dirty=
    commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
    if [[ -n $(git status --porcelain --untracked-files=no -- src Cargo.toml Cargo.lock 2>/dev/null) ]]; then
        dirty=" (with uncommitted changes to src/ or Cargo files)"
    fi
    {
        echo "command=BENCH_MB=$BENCH_MB BENCH_SMALL_MB=$BENCH_SMALL_MB BENCH_REPS=$BENCH_REPS make bench"
        echo "bench_mb=$BENCH_MB"
        echo "small_mb=$BENCH_SMALL_MB"
        echo "reps=$BENCH_REPS"
        echo "nproc=$(nproc)"
        echo "sha_ni=$(grep -qw sha_ni /proc/cpuinfo && echo yes || echo no)"
        echo "cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)"
        echo "mem=$(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)"
        echo "kernel=$(uname -sr)"
        echo "fs=$(df -T "$OUT" | awk 'NR == 2 {print $2}')"
        echo "date=$(date -u '+%Y-%m-%d %H:%M UTC')"
        echo "commit=$commit$dirty"
        echo "baton=$("$BATON" --version)"
        echo "sha256sum=$(sha256sum --version | head -n1)"
        echo "zstd=zstd $(zstd -q -V)"
        echo "openssl=$(openssl version 2>/dev/null | cut -d' ' -f1-2 || echo "no openssl")"
        echo "s3s=s3s-fs 0.14.1"
    } >"$FACTS"
}

cleanup() {
    stop_server
    rm -rf "$OUT"/store-* "$OUT/restored" "$OUT/copy.bin" "$ZST" "$OUT"/.baton-ckpt*
}

main() {
    ensure_tools
    ensure_python
    ensure_baton
    mkdir -p "$OUT"
    trap cleanup EXIT
    cleanup
    rm -rf "$LOGS" "$RESULTS"
    mkdir -p "$LOGS"
    gen_ckpt "$CKPT" "$BENCH_MB"
    gen_ckpt "$SMALL" "$BENCH_SMALL_MB"
    BYTES=$(stat -c %s "$CKPT/weights.bin")
    local small_bytes
    small_bytes=$(stat -c %s "$SMALL/weights.bin")
    record_machine
    make_zst
    start_server

    # Repetitions are interleaved, so that a noisy minute hurts one sample of each.
    for REP in $(seq "$BENCH_REPS"); do
        say "repetition $REP of $BENCH_REPS"
        bench_baselines "$BYTES"
        bench_store dir "$OUT/store-dir"
        ((REP > 1)) || record_sizes
        rm -rf "$OUT/store-dir"
        bench_no_compression
        fresh_bucket
        bench_store s3 "s3://$BUCKET/rep$REP"
        fresh_bucket
        bench_memory "$SMALL" "$small_bytes" -small
        bench_memory "$SMALL" "$small_bytes" -small-arena1 MALLOC_ARENA_MAX=1
        bench_memory "$CKPT" "$BYTES" -arena1 MALLOC_ARENA_MAX=1
    done

    "$PY" bench/report.py "$RESULTS" "$FACTS" "$REPORT"
}

main "$@"
