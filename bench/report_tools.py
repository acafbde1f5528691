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
    every = "limits baton aws aws-tuned tarzstd rclone restic incremental latency flush throughput"
    which = "" if tools.split() == every.split() else f'TOOLS="{tools}" '
    w(os.environ.get("BENCH_COMMAND") or f"BENCH_MB={mib:.0f} BENCH_REPS={reps} {which}make bench-tools")
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
    phases = [("up", "Upload (empty server)"), ("down", "Restore"),
              ("inc", "Second checkpoint: 95% of the weights unchanged, new optimizer state (after the first)")]
    for rtt in sorted({k[1].split("@")[1] for k in med if "@" in k[1]}, key=lambda r: int(r.rstrip("ms"))):
        phases += [(f"up@{rtt}", f"Upload with {rtt} of added round trip"), (f"down@{rtt}", f"Restore with {rtt} of added round trip")]
    phases.append(("-", "Machine limits (local)"))
    for phase, title in phases:
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
            if "@" in phase and (k[0], phase.split("@")[0]) in med:
                label += f" ({m['mibs'] / med[(k[0], phase.split('@')[0])]['mibs']:.0%} of its 0 ms figure)"
            w(f"| {label} | {m['wall']:.2f} | {m['walls']} | {m['mibs']:.0f} | {ratio} | {m['cpu']:.2f} | {m['srv']:.2f} | {m['rss']:.0f} |")
        w("")
    out_dir = os.path.dirname(path)
    flush = []
    if os.path.exists(os.path.join(out_dir, "flush.tsv")):
        import json
        for line in open(os.path.join(out_dir, "flush.tsv")):
            store, js = line.rstrip("\n").split("\t", 1)
            flush.append((store, json.loads(js)))
    if flush:
        w("## Eviction flush: SIGTERM to a durable manifest\n")
        w(f"`bench/flush.py`: a trainer commits a {os.environ.get('FLUSH_MB', '1024')} MiB float32 checkpoint, waits until it is durable, gets")
        w("SIGTERM, changes 5% of the weights (20 regions), saves in place, commits and exits. Trainer save")
        w("is SIGTERM to its commit returning; flush is from there to baton's exit (the manifest written).\n")
        w("| Store | Total (s), median | All runs (s) | Trainer save (s) | Flush (s) | New bytes (MiB) |")
        w("|---|---:|---:|---:|---:|---:|")
        for store in ("dir", "s3"):
            rs = [r for st, r in flush if st == store]
            if rs:
                w(f"| {store} | {statistics.median(r['total'] for r in rs):.2f} | {' / '.join('%.2f' % r['total'] for r in rs)} | "
                  f"{statistics.median(r['trainer_save'] for r in rs):.2f} | {statistics.median(r['flush'] for r in rs):.2f} | "
                  f"{statistics.median(r['new_bytes'] for r in rs) / 2**20:.0f} |")
        w("")
    tp = []
    if os.path.exists(os.path.join(out_dir, "throughput.jsonl")):
        import json
        tp = [json.loads(l) for l in open(os.path.join(out_dir, "throughput.jsonl")) if l.strip()]
    if tp:
        w("## A CPU-bound trainer while baton uploads\n")
        w("`bench/throughput.py`: a single-threaded compute loop (~2 s epochs) that writes and commits a")
        w(f"{os.environ.get('THROUGHPUT_MB', '512')} MiB checkpoint after each epoch, on a directory store; its compute seconds bare and under baton.\n")
        w("| Run | Compute bare (s) | Compute under baton (s) | Throughput kept | Wall bare (s) | Wall under baton (s) |")
        w("|---:|---:|---:|---:|---:|---:|")
        for i, r in enumerate(tp, 1):
            w(f"| {i} | {r['compute_bare']:.2f} | {r['compute_under_baton']:.2f} | {r['ratio']:.0%} | {r['wall_bare']:.1f} | {r['wall_under_baton']:.1f} |")
        w("")
    w("## Targets (issue 12)\n")
    for phase, (what, target) in TARGETS.items():
        b = med.get(("baton", phase))
        if b:
            state = "met" if b["mibs"] >= target else "NOT met"
            w(f"- {what}: baton {b['mibs']:.0f} MiB/s against a target of {target:.0f}: {state}.")
    for phase in sorted(k[1] for k in med if k[0] == "baton" and "@" in k[1]):
        b, zero = med[("baton", phase)], med.get(("baton", phase.split("@")[0]))
        if zero:
            kept = b["mibs"] / zero["mibs"]
            w(f"- {phase}: baton keeps {kept:.0%} of its 0 ms figure (target 80%): {'met' if kept >= 0.8 else 'NOT met'}.")
    rs = [r for st, r in flush if st == "s3"] or [r for _, r in flush]
    if rs:
        t = statistics.median(r["total"] for r in rs)
        w(f"- eviction flush, {os.environ.get('FLUSH_MB', '1024')} MiB 95% unchanged: {t:.2f} s SIGTERM to durable manifest against a target of 1 s: {'met' if t < 1 else 'NOT met'}.")
    if tp:
        kept = statistics.median(r["ratio"] for r in tp)
        w(f"- CPU-bound trainer throughput under baton: {kept:.0%} of bare against a target of 95%: {'met' if kept >= 0.95 else 'NOT met'}.")
    w("")
    with open(report, "w") as f:
        f.write("\n".join(out))


if __name__ == "__main__":
    main()
