"""Write docs/benchmarks-tools.md from bench/compare.sh's results.tsv.

usage: report_tools.py RESULTS_TSV MIB REPS REPORT COMMIT TOOLS
"""

import collections
import datetime
import os
import platform
import statistics
import subprocess
import sys

TARGETS = {"up": ("first upload", 420.0), "down": ("restore, verified", 450.0)}


def version(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.splitlines()[0].strip()
    except Exception:
        return "?"


def main():
    path, mib, reps, report, commit, tools = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6]
    rows = collections.OrderedDict()
    with open(path) as f:
        for line in f:
            label, phase, wall, cpu, rss, srv = line.rstrip("\n").split("\t")
            rows.setdefault((label, phase), []).append((float(wall), float(cpu), int(rss), float(srv)))
    med = {}
    for k, v in rows.items():
        wall = statistics.median(x[0] for x in v)
        med[k] = dict(
            n=len(v),
            wall=wall,
            walls=" / ".join(f"{x[0]:.2f}" for x in v),
            mibs=mib / wall,
            cpu=statistics.median(x[1] for x in v),
            rss=max(x[2] for x in v) / 1024,
            srv=statistics.median(x[3] for x in v),
        )
    out = []
    w = out.append
    w("# baton beside the usual tools, on one S3 server\n")
    w(f"Upload and restore of {mib:.0f} MiB of float32 weights and two Adam moments (three files) to")
    w("s3s-fs 0.14.1 (disk-backed S3, on 127.0.0.1), by baton and by the tools users would pick")
    w("instead, on the same data and server, in one run, repetitions interleaved. Produced by:\n")
    w("```")
    w(f"BENCH_MB={mib:.0f} BENCH_REPS={reps} make bench-tools")
    w("```\n")
    w("The script is `bench/compare.sh` (it installs s3s-fs, rclone, restic and the aws CLI when")
    w("missing); raw timings and logs are in `bench-out/tools/`. Every restore is compared with")
    w("the original files byte for byte (`cmp`) before its time counts.\n")
    w("| | |\n|---|---|")
    w(f"| Machine | {os.cpu_count()} cores, {platform.machine()}, Linux {platform.release()} (a shared VM: noisy) |")
    w(f"| Date | {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC |")
    w(f"| baton | commit {commit}, `cargo build --release` |")
    w(f"| Tools | {version(['rclone', 'version'])}; {version(['restic', 'version'])}; "
      f"{version([os.path.join(os.path.dirname(sys.executable), 'aws'), '--version'])}; {version(['zstd', '--version'])} |")
    w("")
    w(f"MiB/s = 2^20 bytes of checkpoint per second of wall time; median of {reps}. CPU is the")
    w("client's user + system seconds (GNU time); server CPU is s3s-fs's, from /proc; peak RSS")
    w("is the client's largest resident set.\n")
    for phase, title in (("up", "Upload (empty server)"), ("down", "Restore"), ("-", "Machine limits (local)")):
        keys = [k for k in med if k[1] == phase]
        if not keys:
            continue
        base = med.get(("baton", phase))
        w(f"## {title}\n")
        w("| Tool | Median wall (s) | All runs (s) | MiB/s | baton vs it | Client CPU (s) | Server CPU (s) | Peak RSS (MiB) |")
        w("|---|---:|---:|---:|---:|---:|---:|---:|")
        for k in keys:
            m = med[k]
            ratio = f"{base['mibs'] / m['mibs']:.2f}x" if base else "-"
            label = k[0].replace("|", "\\|")
            w(f"| {label} | {m['wall']:.2f} | {m['walls']} | {m['mibs']:.0f} | {ratio} | {m['cpu']:.2f} | {m['srv']:.2f} | {m['rss']:.0f} |")
        w("")
    w("## Targets (issue 12)\n")
    for phase, (what, target) in TARGETS.items():
        b = med.get(("baton", phase))
        if b:
            state = "met" if b["mibs"] >= target else "NOT met"
            w(f"- {what}: baton {b['mibs']:.0f} MiB/s against a target of {target:.0f}: {state}.")
    w("")
    with open(report, "w") as f:
        f.write("\n".join(out))


if __name__ == "__main__":
    main()
