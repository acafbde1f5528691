"""Run one command, time it, and append a row to a results file.

Row (tab-separated): label, rep, bytes, wall seconds, peak RSS in KiB, and, for
`baton run`, the capture and upload seconds baton logs itself (empty otherwise).
Peak RSS comes from wait4(2): the largest resident set of the process and of any
descendant it waited for. The command's stdout is discarded; stderr goes to the log.

usage: measure.py RESULTS LABEL REP BYTES LOG -- COMMAND [ARG...]
"""

import os
import re
import subprocess
import sys
import time

CAPTURED = re.compile(r"captured checkpoint \d+ .* in ([0-9.]+) s")
DURABLE = re.compile(r"is durable: .* uploaded in ([0-9.]+) s")


def logged_seconds(log: str, pattern: re.Pattern) -> str:
    found = pattern.findall(log)
    return found[-1] if found else ""


def main() -> int:
    results, label, rep, nbytes, log_path, sep, *cmd = sys.argv[1:]
    if sep != "--" or not cmd:
        sys.exit(__doc__)
    with open(log_path, "wb") as log:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    with open(log_path, errors="replace") as f:
        text = f.read()
    if proc.returncode != 0:
        sys.stderr.write(f"bench: `{' '.join(cmd)}` exited with {proc.returncode}; its log:\n{text[-4000:]}\n")
        return 1
    row = [label, rep, nbytes, f"{wall:.3f}", str(usage.ru_maxrss),
           logged_seconds(text, CAPTURED), logged_seconds(text, DURABLE)]
    with open(results, "a") as f:
        f.write("\t".join(row) + "\n")
    print(f"  {label:<34} rep {rep}: {wall:7.2f} s  {usage.ru_maxrss / 1024:7.1f} MiB peak RSS", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
