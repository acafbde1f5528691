"""Run one command, time it, and append a row to a results file.

Row (tab-separated): label, rep, bytes, wall seconds, peak RSS in KiB, CPU seconds
(user + system), CPU seconds the server process used meanwhile (with --server PID), and,
for `baton run`, the capture and upload seconds baton logs itself (empty otherwise).
Peak RSS and CPU come from wait4(2): the process and any descendant it waited for.
The command's stdout is discarded; its stderr goes to the log.

usage: measure.py RESULTS LABEL REP BYTES LOG [--server PID] -- COMMAND [ARG...]
"""

import os
import re
import subprocess
import sys
import time

CAPTURED = re.compile(r"captured checkpoint \d+ .* in ([0-9.]+) s")
DURABLE = re.compile(r"is durable: .* uploaded in ([0-9.]+) s")
TICK = os.sysconf("SC_CLK_TCK")


def logged_seconds(log: str, pattern: re.Pattern) -> str:
    found = pattern.findall(log)
    return found[-1] if found else ""


def cpu_seconds(pid: str) -> float:
    """utime + stime of a running process, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def main() -> int:
    args = sys.argv[1:]
    if len(args) < 7:
        sys.exit(__doc__)
    results, label, rep, nbytes, log_path = args[:5]
    args = args[5:]
    server = None
    if args[0] == "--server":
        server, args = args[1], args[2:]
    if args[:1] != ["--"] or len(args) < 2:
        sys.exit(__doc__)
    cmd = args[1:]

    server_before = cpu_seconds(server) if server else 0.0
    with open(log_path, "wb") as log:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    server_cpu = f"{cpu_seconds(server) - server_before:.2f}" if server else ""
    with open(log_path, errors="replace") as f:
        text = f.read()
    if proc.returncode != 0:
        sys.stderr.write(f"bench: `{' '.join(cmd)}` exited with {proc.returncode}; its log:\n{text[-4000:]}\n")
        return 1
    cpu = usage.ru_utime + usage.ru_stime
    row = [label, rep, nbytes, f"{wall:.3f}", str(usage.ru_maxrss), f"{cpu:.2f}", server_cpu,
           logged_seconds(text, CAPTURED), logged_seconds(text, DURABLE)]
    with open(results, "a") as f:
        f.write("\t".join(row) + "\n")
    print(f"  {label:<30} rep {rep}: {wall:7.2f} s wall {cpu:7.2f} s CPU {usage.ru_maxrss / 1024:7.1f} MiB peak RSS",
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
