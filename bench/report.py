"""Turn bench/run.sh's measurements into docs/benchmarks.md (and print the tables).

usage: report.py RESULTS.tsv FACTS.txt OUT.md
"""

import statistics
import sys
from collections import defaultdict

MB = 1e6
MIB = 1 << 20

# label -> (operation, store), in table order.
MAIN_ROWS = {
    "sha256sum": ("`sha256sum` (baseline)", "-"),
    "zstd-1": ("`zstd -1 -T1 -c > /dev/null` (baseline)", "-"),
    "zstd-1-T0": ("`zstd -1 -T0 -c > /dev/null` (both cores)", "-"),
    "zstd-d": ("`zstd -d -c > /dev/null` of the `zstd -1` output (reference)", "-"),
    "openssl-sha256": ("`openssl dgst -sha256` (reference)", "-"),
    "cp": ("`cp` to a new file (reference)", "-"),
    "dir-upload": ("baton upload, empty store", "directory"),
    "dir-upload-dedup": ("baton upload, same bytes again", "directory"),
    "dir-upload-raw": ("baton upload, empty store, `--zstd-level 0`", "directory"),
    "dir-restore": ("baton restore", "directory"),
    "s3-upload": ("baton upload, empty store", "S3 (s3s-fs)"),
    "s3-upload-dedup": ("baton upload, same bytes again", "S3 (s3s-fs)"),
    "s3-restore": ("baton restore", "S3 (s3s-fs)"),
}
UPLOADS = ("dir-upload", "dir-upload-dedup", "dir-upload-raw", "s3-upload", "s3-upload-dedup")
FIELDS = ("bytes", "wall", "rss", "cpu", "server_cpu", "capture", "upload")


def load(path):
    runs = defaultdict(list)
    for line in open(path):
        label, _rep, *values = line.rstrip("\n").split("\t")
        run = {k: float(v) if v else None for k, v in zip(FIELDS, values)}
        run["rss"] /= 1024
        runs[label].append(run)
    return runs


def median(runs, key):
    values = [r[key] for r in runs if r[key] is not None]
    return statistics.median(values) if values else None


def size(nbytes):
    return f"{nbytes / MIB:.0f} MiB"


def main_table(runs):
    rate = {label: r[0]["bytes"] / median(r, "wall") / MB for label, r in runs.items()}
    sha, zstd = rate["sha256sum"], rate["zstd-1"]
    rows = [
        "| Operation | Store | Median wall (s) | All runs (s) | MB/s | vs sha256sum | vs zstd -1 | CPU (s) | Peak RSS (MiB) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, (op, store) in MAIN_ROWS.items():
        if label not in runs:
            continue
        r = runs[label]
        walls = " / ".join(f"{x['wall']:.2f}" for x in r)
        rows.append(
            f"| {op} | {store} | {median(r, 'wall'):.2f} | {walls} | {rate[label]:.0f} | {rate[label] / sha:.2f}x "
            f"| {rate[label] / zstd:.2f}x | {median(r, 'cpu'):.2f} | {median(r, 'rss'):.1f} |"
        )
    return "\n".join(rows)


def breakdown_table(runs):
    rows = [
        "| Command | Store | Median wall (s) | Capture copy (s) | Chunk, hash, compress, store (s) | Rest (s) | baton CPU (s) | server CPU (s) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label in UPLOADS + ("s3-restore",):
        if label not in runs:
            continue
        r = runs[label]
        wall, cap, up, server = median(r, "wall"), median(r, "capture"), median(r, "upload"), median(r, "server_cpu")
        op, store = MAIN_ROWS[label]
        cells = [f"{cap:.2f}", f"{up:.2f}", f"{max(wall - cap - up, 0):.2f}"] if cap is not None and up is not None else ["-"] * 3
        rows.append(
            f"| {op.removeprefix('baton ')} | {store} | {wall:.2f} | {' | '.join(cells)} | {median(r, 'cpu'):.2f} "
            f"| {'-' if server is None else f'{server:.2f}'} |"
        )
    return "\n".join(rows)


def memory_table(runs):
    def cell(label):
        if label not in runs:
            return "-"
        r = runs[label]
        return f"{median(r, 'rss'):.1f} MiB ({median(r, 'wall'):.2f} s)"

    rows = [
        "| Operation | Size | glibc malloc defaults | `MALLOC_ARENA_MAX=1` |",
        "|---|---:|---:|---:|",
    ]
    for op in ("upload", "restore"):
        for suffix, big in (("-small", False), ("", True)):
            default = f"dir-{op}{suffix}"
            if default not in runs:
                continue
            rows.append(f"| baton {op}, directory store | {size(runs[default][0]['bytes'])} | {cell(default)} "
                        f"| {cell(f'dir-{op}{suffix}-arena1')} |")
    return "\n".join(rows)


def sizes_note(zstd_bytes, stored, logical):
    if stored < logical * 0.99:
        return "baton kept compressed the chunks where zstd saved at least 1/8 of the bytes (docs/store.md)."
    return (f"`zstd -1` saves {100 * (1 - zstd_bytes / logical):.0f}% on it, under baton's bar of 1/8 "
            "(docs/store.md), so baton stores these chunks raw: compressing and decompressing "
            "them would cost more time than the bytes saved, most of all at restore.")


def main():
    results, facts_path, out = sys.argv[1:]
    facts = dict(line.rstrip("\n").split("=", 1) for line in open(facts_path) if "=" in line)
    runs = load(results)
    table, breakdown, memory = main_table(runs), breakdown_table(runs), memory_table(runs)
    logical = int(runs["sha256sum"][0]["bytes"])
    zstd_bytes, stored = int(facts["zstd_bytes"]), int(facts["stored_bytes"])

    doc = f"""# Benchmarks

Upload and restore of a generated {size(logical)} float32 checkpoint to the directory store
and to a local S3 server, next to `sha256sum` and `zstd -1` of the same bytes, measured on
the same machine in the same run. Produced by:

```
{facts['command']}
```

`make bench` alone uses the defaults (`BENCH_MB=1024`, `BENCH_SMALL_MB` = a quarter of it,
`BENCH_REPS=3`; `BATON=path` measures another binary). The script is `bench/run.sh`; every
run overwrites this file. Raw timings and baton's logs stay in `bench-out/`.

## Machine

| | |
|---|---|
| CPU | {facts['cpu']}, {facts['nproc']} cores (`nproc`), a shared VM (noisy) |
| Memory | {facts['mem']} |
| Kernel, filesystem | {facts['kernel']}, {facts['fs']} |
| Date | {facts['date']} |
| baton | {facts['baton']}, commit {facts['commit']}, `cargo build --release` |
| Tools | {facts['sha256sum']}; {facts['zstd']}; {facts['openssl']}; {facts['s3s']} |

## Results

Median of {facts['reps']} run(s) each, repetitions interleaved. MB/s is 10^6 bytes of the
checkpoint per second of wall time; the "vs" columns divide a row's MB/s by the baseline's
(1.00x = as fast as `sha256sum`, or single-threaded `zstd -1`, on the same file). CPU is
user + system time of the process and what it ran; peak RSS is its largest resident set,
both from `wait4(2)`.

{table}

- **An upload's wall time** is that of `baton run --store URL --run-id ID --dir DIR -- true`
  on a directory already holding the checkpoint: baton looks for a checkpoint to restore
  (there is none), runs `true`, captures the directory as the final checkpoint (a full copy
  into its staging directory), then cuts it into content-defined chunks, hashes the file and
  every chunk (sha256), compresses each chunk (zstd -1) where that saves at least 1/8 of its
  bytes (judged on a 64 KiB sample first) and stores it, writes the manifest
  and attempt records, and exits. The baselines only read the file once.
- **"Same bytes again"** uploads the unchanged directory under a second run id into the same
  store: every chunk is already there, so baton still copies, chunks and hashes everything
  but only checks that each chunk exists (HEAD requests; `stat` for the directory store).
- **`--zstd-level 0`** is the first upload again with compression off (chunks stored raw),
  to show what compressing costs.
- **Restore** is `baton restore --store URL RUN --to NEWDIR`: download, decompress the
  chunks stored compressed, check each chunk's hash, write, and check the whole file's hash.
- **Directory store** chunk writes are fsynced (temporary file, `fsync`, link into place),
  so the directory-store upload includes writing the stored bytes to disk; the
  baselines, the capture copy and restore only touch the page cache.
- **S3 (s3s-fs)** is s3s-fs, a Rust S3 server keeping objects as files on the same disk, on
  the same {facts['nproc']} cores (emptied between repetitions). The CPU it burns is taken from
  baton (see "server CPU" below); a real S3 endpoint costs no local CPU but adds network latency.
  (moto, the server of the tests, was this bench's server before: it keeps every object in
  Python's memory and is several times slower than s3s-fs.)
- **Hash baselines**: GNU `sha256sum` hashes in portable C, while OpenSSL and baton (the
  `sha2` crate) use the CPU's SHA instructions when present (here: {facts['sha_ni']}). That is why
  baton, which hashes every byte twice (per chunk, and per file), can still outrun
  `sha256sum`; `openssl dgst -sha256` shows the hashing speed limit.
- The input file is in the page cache (generated before the run, {facts['mem']} of RAM), so no
  row waits for reading the disk.

### Where the time goes

From baton's own log lines (`captured checkpoint ... in X s`, `... uploaded in X s`); "rest"
is start-up, the check for a checkpoint to restore, the attempt records and exit. "server CPU"
is the CPU time the S3 server used during the command. Medians:

{breakdown}

### Memory

Peak RSS (and wall time) of baton with the directory store at two checkpoint sizes, with
glibc's default malloc settings (one arena per thread, up to 8 per core) and with
`MALLOC_ARENA_MAX=1`:

{memory}

baton holds a bounded window of chunks: upload keeps up to 8 chunks queued from the file
reader and 8 being hashed, compressed and stored (256 KiB to 4 MiB each, plus compressed
copies); restore keeps 8 chunk downloads in flight and streams them into the file. Whatever
growth with size disappears under `MALLOC_ARENA_MAX=1` is freed memory that glibc keeps in
the per-thread arenas of tokio's blocking threads (where baton hashes, compresses and
writes), not data baton holds on to.

### Sizes

| | Bytes | Ratio |
|---|---:|---:|
| Checkpoint | {logical:,} | 1.000 |
| `zstd -1` of the whole file | {zstd_bytes:,} | {zstd_bytes / logical:.3f} |
| baton's chunks in the directory store ({facts['chunks']} chunks, each zstd -1 on its own where it saves 1/8) | {stored:,} | {stored / logical:.3f} |

The data is a slow sine plus small Gaussian noise, written as float32 (`bench/gen_ckpt.py`):
like trained weights, the sign and exponent bytes compress and the mantissas do not.
{sizes_note(zstd_bytes, stored, logical)}
"""
    with open(out, "w") as f:
        f.write(doc)
    print(f"\n{table}\n\n{breakdown}\n\n{memory}\n\nwrote {out}")


if __name__ == "__main__":
    main()
