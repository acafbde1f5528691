#!/usr/bin/env bash
# Dataset pulls: `baton data pull` (no cache, cold cache, warm cache) beside `aws s3 sync`
# and `rclone copy`, on the same S3 server (s3s-fs, disk-backed, on 127.0.0.1), for a
# dataset of many small files and one of a few large files. Prints a markdown table.
#
# Knobs (environment):
#   BENCH_MB     dataset size in MiB, each shape (2048)
#   BENCH_FILES  files of the many-files shape  (10000)
#   BENCH_REPS   repetitions; the median is reported (3)
#   BATON        the binary (target/release/baton)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

BENCH_MB=${BENCH_MB:-2048}
BENCH_FILES=${BENCH_FILES:-10000}
BENCH_REPS=${BENCH_REPS:-3}
BATON=${BATON:-$ROOT/target/release/baton}
OUT=$ROOT/bench-out/data
SRV=$OUT/server
S3S=${S3S:-$ROOT/bench-out/bin/bin/s3s-fs}
if [[ ! -x $S3S ]]; then
    echo "== installing s3s-fs 0.14.1 (cargo, ~3 min)" >&2
    cargo install -q s3s-fs@0.14.1 --features binary --locked --root "$ROOT/bench-out/bin"
    S3S=$ROOT/bench-out/bin/bin/s3s-fs
fi
AWS=$ROOT/.venv/bin/aws
PORT=${BENCH_PORT:-8916}
KEY=BENCHKEY
SECRET=benchsecretbenchsecret
BUCKET=bench

die() { echo "bench-data: $*" >&2; exit 1; }
say() { echo "== $*" >&2; }
[[ -x $BATON ]] || die "no $BATON: cargo build --release (or BATON=target/debug/baton)"
[[ -x $S3S ]] || die "no s3s-fs: run bench/compare.sh once (it installs it)"
command -v rclone >/dev/null || die "no rclone"
[[ -x $AWS ]] || die "no $AWS"

mkdir -p "$OUT"
make_data() {
    local stamp=$OUT/.made-$BENCH_MB-$BENCH_FILES
    [[ -f $stamp ]] && return
    rm -rf "$OUT/many" "$OUT/large"
    say "generating $BENCH_MB MiB as $BENCH_FILES files and as 4 files"
    python3 - "$OUT" "$BENCH_MB" "$BENCH_FILES" <<'EOF'
import os, random, sys
out, mib, files = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
total = mib << 20
r = random.Random(20240611)
each = total // files
for i in range(files):
    d = f"{out}/many/shard-{i // 1000:03}"
    os.makedirs(d, exist_ok=True)
    with open(f"{d}/sample-{i:06}.bin", "wb") as f:
        f.write(r.randbytes(each))
os.makedirs(f"{out}/large", exist_ok=True)
for i in range(4):
    with open(f"{out}/large/part-{i}.bin", "wb") as f:
        left = total // 4
        while left:
            n = min(left, 8 << 20)
            f.write(r.randbytes(n))
            left -= n
EOF
    touch "$stamp"
}

SERVER_PID=
start_server() {
    rm -rf "$SRV" && mkdir -p "$SRV/$BUCKET"
    "$S3S" --host 127.0.0.1 --port "$PORT" --access-key "$KEY" --secret-key "$SECRET" "$SRV" >"$OUT/s3s-fs.log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 50); do
        curl -s -o /dev/null "http://127.0.0.1:$PORT/" && return
        sleep 0.1
    done
    die "s3s-fs did not start (see $OUT/s3s-fs.log)"
}
stop_server() { [[ -n $SERVER_PID ]] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=; }
trap stop_server EXIT

export AWS_ACCESS_KEY_ID=$KEY AWS_SECRET_ACCESS_KEY=$SECRET AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
export AWS_ENDPOINT_URL=http://127.0.0.1:$PORT AWS_ALLOW_HTTP=true
unset AWS_CA_BUNDLE
RCLONE_CONF=$OUT/rclone.conf
cat >"$RCLONE_CONF" <<EOF
[s3s]
type = s3
provider = Other
access_key_id = $KEY
secret_access_key = $SECRET
endpoint = http://127.0.0.1:$PORT
region = us-east-1
EOF

# Seconds of one command, its output discarded.
timed() {
    local s e
    s=$(date +%s.%N)
    "$@" >/dev/null 2>>"$OUT/errors.log" || die "failed: $* (see $OUT/errors.log)"
    e=$(date +%s.%N)
    echo "$e - $s" | bc
}
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
fresh() { rm -rf "$OUT/dst" "$OUT/cache.tmp"; sync; }

make_data
start_server
STORE=s3://$BUCKET/store
declare -A RESULT
for shape in many large; do
    say "uploading $shape (aws s3 sync for the tools, baton data push for baton)"
    RESULT[$shape,push-aws]=$(timed "$AWS" s3 sync --quiet "$OUT/$shape" "s3://$BUCKET/raw/$shape")
    RESULT[$shape,push-baton]=$(timed "$BATON" -q data push "$OUT/$shape" --name "$shape" --store "$STORE")
    for tool in aws rclone baton baton-cold-cache baton-warm-cache; do
        times=()
        for _ in $(seq "$BENCH_REPS"); do
            fresh
            case $tool in
            aws) t=$(timed "$AWS" s3 sync --quiet "s3://$BUCKET/raw/$shape" "$OUT/dst") ;;
            rclone) t=$(timed rclone --config "$RCLONE_CONF" copy --transfers 32 --checkers 32 "s3s:$BUCKET/raw/$shape" "$OUT/dst") ;;
            baton) t=$(timed "$BATON" -q data pull "$shape" --store "$STORE" --to "$OUT/dst") ;;
            baton-cold-cache) t=$(timed "$BATON" -q data pull "$shape" --store "$STORE" --to "$OUT/dst" --cache "$OUT/cache.tmp") ;;
            baton-warm-cache)
                "$BATON" -q data pull "$shape" --store "$STORE" --to "$OUT/warm" --cache "$OUT/cache.warm" >/dev/null 2>&1 || true
                rm -rf "$OUT/warm"
                t=$(timed "$BATON" -q data pull "$shape" --store "$STORE" --to "$OUT/dst" --cache "$OUT/cache.warm")
                ;;
            esac
            times+=("$t")
        done
        RESULT[$shape,$tool]=$(printf '%s\n' "${times[@]}" | median)
        say "$shape $tool: ${RESULT[$shape,$tool]} s (median of ${times[*]})"
    done
    rm -rf "$OUT/cache.warm"
done

mib=$BENCH_MB
echo "| pull of $mib MiB | aws s3 sync | rclone copy (32 transfers) | baton data pull | baton, cold cache | baton, warm cache |"
echo "| --- | --- | --- | --- | --- | --- |"
for shape in many large; do
    label=$([[ $shape == many ]] && echo "$BENCH_FILES files" || echo "4 files")
    row="| $label"
    for tool in aws rclone baton baton-cold-cache baton-warm-cache; do
        row+=" | $(printf '%.2f s (%.0f MiB/s)' "${RESULT[$shape,$tool]}" "$(echo "$mib / ${RESULT[$shape,$tool]}" | bc -l)")"
    done
    echo "$row |"
done
echo
echo "| push of $mib MiB | aws s3 sync | baton data push |"
echo "| --- | --- | --- |"
for shape in many large; do
    label=$([[ $shape == many ]] && echo "$BENCH_FILES files" || echo "4 files")
    echo "| $label | $(printf '%.2f s' "${RESULT[$shape,push-aws]}") | $(printf '%.2f s' "${RESULT[$shape,push-baton]}") |"
done
