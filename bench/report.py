"""Turn bench/run.sh's measurements into docs/benchmarks.md (and print the tables).

usage: report.py RESULTS.tsv FACTS.txt OUT.md
"""

import statistics
import sys
from collections import defaultdict

MB = 1e6
MIB = 1 << 20

# label -> (operation, store); the order is the table's.
ROWS = {
    "sha256sum": ("`sha256sum` (baseline)", "-"),
    "zstd-1": ("`zstd -1 -T1 -c > /dev/null` (baseline)", "-"),
    "zstd-1-T0": ("`zstd -1 -T0 -c > /dev/null` (all cores)", "-"),
    "openssl-sha256": ("`openssl dgst -sha256` (reference)", "-"),
    "cp": ("`cp` to a new file (reference)", "-"),
    "dir-upload": ("baton upload, empty store", "directory"),
    "dir-upload-dedup": ("baton upload, same bytes again", "directory"),
    "dir-restore": ("baton restore", "directory"),
    "s3-upload": ("baton upload, empty store", "S3 (moto)"),
    "s3-upload-dedup": ("baton upload, same bytes again", "S3 (moto)"),
    "s3-restore": ("baton restore", "S3 (moto)"),
    "dir-upload-small": ("baton upload, empty store", "directory"),
    "dir-restore-small": ("baton restore", "directory"),
}


def load(path):
    runs = defaultdict(list)
    for line in open(path):
        label, _rep, nbytes, wall, rss, capture, upload = line.rstrip("\n").split("\t")
        runs[label].append({
            "bytes": int(nbytes),
            "wall": float(wall),
            "rss": int(rss) / 1024,
            "capture": float(capture) if capture else None,
            "upload": float(upload) if upload else None,
        })
    return runs


def median(runs, key):
    values = [r[key] for r in runs if r[key] is not None]
    return statistics.median(values) if values else None


def size(nbytes):
    return f"{nbytes / MIB:.0f} MiB"


def memory_note(runs):
    """Peak RSS at the two checkpoint sizes, side by side."""
    parts = []
    for what, big, small in (("upload", "dir-upload", "dir-upload-small"), ("restore", "dir-restore", "dir-restore-small")):
        if big in runs and small in runs:
            parts.append(f"{what} {median(runs[small], 'rss'):.1f} MiB at {size(runs[small][0]['bytes'])} and "
                         f"{median(runs[big], 'rss'):.1f} MiB at {size(runs[big][0]['bytes'])}")
    return ("peak RSS of baton (directory store): " + "; ".join(parts) + ". Upload holds a bounded window "
            "of chunks (8 in flight, 256 KiB to 4 MiB each, and their compressed copies), restore keeps "
            "8 chunk downloads in flight and streams them into the file, so neither should follow the "
            "checkpoint's size.")


def main():
    results, facts_path, out = sys.argv[1:]
    facts = dict(line.rstrip("\n").split("=", 1) for line in open(facts_path) if "=" in line)
    runs = load(results)
    rate = {label: r[0]["bytes"] / median(r, "wall") / MB for label, r in runs.items()}
    base_sha, base_zstd = rate["sha256sum"], rate["zstd-1"]

    rows = []
    add = rows.append
    add("| Operation | Store | Size | Median wall (s) | All runs (s) | MB/s | vs sha256sum | vs zstd -1 | Peak RSS (MiB) |")
    add("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for label, (op, store) in ROWS.items():
        if label not in runs:
            continue
        r = runs[label]
        walls = " / ".join(f"{x['wall']:.2f}" for x in r)
        add(f"| {op} | {store} | {size(r[0]['bytes'])} | {median(r, 'wall'):.2f} | {walls} | {rate[label]:.0f} "
            f"| {rate[label] / base_sha:.2f}x | {rate[label] / base_zstd:.2f}x | {median(r, 'rss'):.1f} |")
    table = "\n".join(rows)

    rows = []
    add = rows.append
    add("| Upload | Store | Median wall (s) | Capture copy (s) | Chunk, hash, compress, send (s) | Rest: start, restore check, records, exit (s) |")
    add("|---|---|---:|---:|---:|---:|")
    for label in ("dir-upload", "dir-upload-dedup", "s3-upload", "s3-upload-dedup", "dir-upload-small"):
        if label not in runs:
            continue
        r = runs[label]
        wall, cap, up = median(r, "wall"), median(r, "capture"), median(r, "upload")
        if cap is None or up is None:
            continue
        op, store = ROWS[label]
        add(f"| {op.removeprefix('baton upload, ')} ({size(r[0]['bytes'])}) | {store} | {wall:.2f} | {cap:.2f} "
            f"| {up:.2f} | {max(wall - cap - up, 0):.2f} |")
    breakdown = "\n".join(rows)

    logical = runs["sha256sum"][0]["bytes"]
    memory = memory_note(runs)
    zstd_bytes, stored = int(facts["zstd_bytes"]), int(facts["stored_bytes"])
    reps = facts["reps"]
    command = f"BENCH_MB={facts['bench_mb']} BENCH_SMALL_MB={facts['small_mb']} BENCH_REPS={reps} make bench"

    doc = f"""# Benchmarks

Upload and restore of a generated {size(logical)} float32 checkpoint to the directory
store and to a local S3 server, next to `sha256sum` and `zstd -1` of the same bytes on the
same machine, in the same run.

Produced by:

```
{command}
```

(`make bench` alone uses the defaults: `BENCH_MB=1024`, `BENCH_SMALL_MB=BENCH_MB/4`,
`BENCH_REPS=3`; `BATON=path` measures another binary.) The script is `bench/run.sh`;
every run overwrites this file. Raw timings and logs stay in `bench-out/`.

## Machine

| | |
|---|---|
| CPU | {facts['cpu']}, {facts['nproc']} cores (`nproc`), shared and noisy |
| Memory | {facts['mem']} |
| Kernel, filesystem | {facts['kernel']}, {facts['fs']} |
| Date | {facts['date']} |
| baton | {facts['baton']}, commit {facts['commit']}, `cargo build --release` |
| Tools | {facts['sha256sum']}; {facts['zstd']}; {facts['openssl']}; moto {facts['moto']} |

## Results

Median of {reps} run(s) each, repetitions interleaved. MB/s is 10^6 bytes of the checkpoint per
second of wall time; "vs" columns divide baton's MB/s by the baseline's (1.00x = as fast as
`sha256sum` / single-threaded `zstd -1` reading the same file). Peak RSS is the largest
resident set of the process (and of what it ran), from `wait4(2)`.

{table}

- **What an upload's wall time includes**: it is `baton run --store URL --run-id ID --dir DIR -- true`
  on a directory already holding the checkpoint: baton looks for a checkpoint to restore
  (there is none), runs `true`, captures the directory as the final checkpoint (a full copy
  into its staging directory), then cuts it into content-defined chunks, hashes the file and
  every chunk (sha256), compresses each chunk (zstd -1) and stores it, writes the manifest
  and the attempt records, and exits. The baselines only read the file once.
- **"Same bytes again"** uploads the unchanged directory under a second run id into the same
  store: every chunk is already there, so baton still copies, chunks and hashes everything
  but sends only existence checks (HEAD requests; `stat` for the directory store) and no data.
- **Directory store** chunk writes are fsynced (write to a temporary file, `fsync`, link into
  place), so that row includes really writing the compressed bytes to disk; the baselines
  and the restore (which does not fsync) only touch the page cache.
- **S3 (moto)** is moto's S3 server, a single Python process on the same 2 cores, keeping
  every object in memory (it is reset between repetitions). Its request handling takes CPU
  from baton; a real S3 endpoint would not, but adds network latency instead.
- **The hash baselines**: GNU `sha256sum` hashes in portable C; OpenSSL and baton (the
  `sha2` crate) use the CPU's SHA instructions when it has them (here: {facts['sha_ni']}).
  baton hashes every byte twice (each chunk, and the whole file for the manifest), so on a
  CPU with SHA instructions it can still beat `sha256sum`; `openssl dgst -sha256` is the
  fairer hashing speed limit.
- The input file is in the page cache (freshly generated, {facts['mem']} of RAM), so no
  row is limited by reading the disk.
- **Memory**: {memory}

### Where an upload's time goes

From baton's own log lines (`captured checkpoint ... in X s`, `... uploaded in X s`), medians:

{breakdown}

### Sizes

| | Bytes | Ratio |
|---|---:|---:|
| Checkpoint | {logical:,} | 1.000 |
| `zstd -1` of the whole file | {zstd_bytes:,} | {zstd_bytes / logical:.3f} |
| baton's chunks in the directory store ({facts['chunks']} chunks, each zstd -1 on its own) | {stored:,} | {stored / logical:.3f} |

The data is a slow sine plus small Gaussian noise, written as float32 (`bench/gen_ckpt.py`):
like real weights, the exponent bytes compress and the mantissas do not.
"""
    with open(out, "w") as f:
        f.write(doc)
    print()
    print(table)
    print()
    print(breakdown)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
