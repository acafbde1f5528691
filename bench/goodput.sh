#!/usr/bin/env bash
# Goodput under preemption: `baton simulate` of a trainer that writes a 1 GiB checkpoint
# per ~20 s epoch, evicted (soft, 60 s vacate window) with exponential inter-arrival
# times of mean 2 minutes, on the directory store. Appends a section to
# docs/benchmarks.md (run after bench/run.sh, which rewrites that file).
#
# Knobs: GOODPUT_EPOCHS (15), GOODPUT_EPOCH_SECONDS (20), GOODPUT_MB (1024),
#        GOODPUT_MEAN (2m), GOODPUT_SEED (1), GOODPUT_REPS (5), BATON (target/release/baton)
# Each repetition replays the same seeded schedule; the table is the median run's.
set -euo pipefail
cd "$(dirname "$0")/.."
BATON=${BATON:-target/release/baton}
EPOCHS=${GOODPUT_EPOCHS:-15}
EPOCH_S=${GOODPUT_EPOCH_SECONDS:-20}
MB=${GOODPUT_MB:-1024}
MEAN=${GOODPUT_MEAN:-2m}
SEED=${GOODPUT_SEED:-1}
REPS=${GOODPUT_REPS:-5}
OUT=bench-out/goodput
PY=.venv/bin/python
DOC=${BENCH_DOC:-docs/benchmarks.md}
rm -rf "$OUT" && mkdir -p "$OUT"

for rep in $(seq 1 "$REPS"); do
    rm -rf "$OUT/store" "$OUT/slots"
    cmd=("$BATON" simulate --store "$OUT/store" --work-dir "$OUT/slots" --mean-interval "$MEAN" --seed "$SEED"
         --slots a100-40gb,t4-16gb,l40s-48gb,h100-80gb --vacate-window 60s --timeline "$OUT/timeline-$rep.svg" --json
         -- "$PY" bench/ckpt_trainer.py --epochs "$EPOCHS" --epoch-seconds "$EPOCH_S" --ckpt-mb "$MB")
    echo "goodput run $rep/$REPS: ${cmd[*]}" >&2
    "${cmd[@]}" > "$OUT/report-$rep.json"
done
rm -rf "$OUT/store"   # tens of GiB of distinct checkpoints; the reports have what we need

"$PY" - "$EPOCHS" "$EPOCH_S" "$MB" "$MEAN" "$SEED" "$OUT"/report-*.json >> "$DOC" <<'PYEOF'
import json, sys
epochs, epoch_s, mb, mean, seed = sys.argv[1:6]
runs = sorted((json.load(open(p)) for p in sys.argv[6:]), key=lambda r: r["totals"]["goodput"])
r = runs[len(runs) // 2]
t = r["totals"]
print()
print("## Goodput under preemption")
print()
print(f"`baton simulate` of `bench/ckpt_trainer.py`: {epochs} epochs of ~{epoch_s} s, each ending in a "
      f"{mb} MiB float32 checkpoint written in place and committed; soft evictions with exponential "
      f"inter-arrival times of mean {mean} (seed {seed}), 60 s vacate window, directory store. Produced by "
      f"`bash bench/goodput.sh` (part of `make bench`; knobs `GOODPUT_EPOCHS`, `GOODPUT_EPOCH_SECONDS`, "
      f"`GOODPUT_MB`, `GOODPUT_MEAN`, `GOODPUT_SEED`, `GOODPUT_REPS`; each repetition replays the same schedule). Useful time is training time that was kept: from the "
      f"end of each attempt's restore to its eviction signal (or exit), less the work done after its last "
      f"durable checkpoint; the rest of the wall time is restore, drain (the trainer's save on SIGTERM), "
      f"flush, process start and redone work. \"Signal to exit\" is from the eviction signal until baton "
      f"was gone: the trainer's save and commit, then the flush.")
print()
print("| # | slot | ending | start (s) | seconds | restore (s) | signal to exit (s) | flush (s) | work lost (s) |")
print("|---:|---|---|---:|---:|---:|---:|---:|---:|")
for a in r["attempts"]:
    flush = "-" if a["flush_seconds"] is None else f'{a["flush_seconds"]:.2f}'
    gone = "-" if a.get("evicted_at") is None else f'{a["start"] + a["duration"] - a["evicted_at"]:.1f}'
    print(f'| {a["attempt"]} | {a["slot"]} | {a["ending"]} | {a["start"]:.1f} | {a["duration"]:.1f} | {a["restore_seconds"]:.2f} | {gone} | {flush} | {a["work_lost"]:.1f} |')
print()
each = " / ".join("%.1f%%" % (100 * x["totals"]["goodput"]) for x in runs)
print(f"Goodput of each run: {each}; the table above is the median run.")
print()
print(f'**Goodput {t["goodput"]*100:.1f}%** (median of {len(runs)}; useful {t["useful_seconds"]:.1f} s of {t["wall_seconds"]:.1f} s wall); '
      f'{t["evictions"]} eviction(s), {t["work_lost_per_eviction"]:.1f} s of work lost per eviction; '
      f'restore {t["restore_seconds"]:.1f} s and final flushes {t["flush_seconds"]:.1f} s in all; '
      f'{t["logical_bytes"]/2**30:.1f} GiB committed, {t["stored_bytes"]/2**30:.1f} GiB stored. '
      f'Completed: {r["completed"]}.')
print()
met = t["goodput"] >= 0.90
print(f'Target (issue 3): goodput >= 90% here. **{"Met" if met else "Not met"}**: the median of {len(runs)} run(s) is '
      f'{t["goodput"]*100:.1f}%, and {sum(x["totals"]["goodput"] >= 0.90 for x in runs)} of {len(runs)} runs reach 90%. '
      'What is left per eviction is restore, the trainer\'s own save on SIGTERM, the flush, and any '
      'training done since the last checkpoint (including the trainer\'s start-up, when it is evicted '
      'before its first commit).')
PYEOF
"$PY" -c 'import json, sys; print("goodput: " + " / ".join("%.1f%%" % (100 * json.load(open(p))["totals"]["goodput"]) for p in sys.argv[1:]))' "$OUT"/report-*.json >&2
