"""A CPU-bound trainer under baton while it uploads, against the same trainer bare
(issue 12): a single-threaded compute loop that writes and commits a MIB checkpoint
after every ~2 s epoch, on a directory store. The work is fixed (EPOCHS x STEPS steps);
the figure is the trainer's throughput under baton over its bare throughput, both
measured over its compute loops (the seconds its steps took; 1.00 = baton costs the
training nothing). Also reported: whole wall times, which under baton include the
final checkpoint's upload and any backlog of uploads the epochs outran.

usage: throughput.py BATON STORE_DIR MIB EPOCHS REPS WORKDIR -> JSON lines, then a summary
"""

import json
import os
import statistics
import subprocess
import sys
import time

TRAINER = r'''
import json, os, subprocess, sys, time
os.environ.setdefault("OMP_NUM_THREADS", "1")
import numpy as np
mib, epochs, steps = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
d = os.environ.get("BATON_CHECKPOINT_DIR", sys.argv[4] if len(sys.argv) > 4 else ".")
os.makedirs(d, exist_ok=True)
n = mib * (1 << 20) // 4
base = np.random.default_rng(3).standard_normal(n).astype(np.float32)
a = np.random.default_rng(4).standard_normal((160, 160))
compute = 0.0
for e in range(1, epochs + 1):
    t = time.time()
    x = a
    for _ in range(steps):          # the "training": pure CPU on one core
        x = np.tanh(x @ a * 0.01)
    compute += time.time() - t
    (base * np.float32(1 + 1e-3 * e)).tofile(os.path.join(d, "model.bin"))
    if "BATON_SOCKET" in os.environ:
        subprocess.run([os.environ["BATON_BIN"], "commit", "--epoch", str(e)], check=True)
print(json.dumps({"compute": compute}))
'''


def calibrate(py, trainer):
    # Steps for a ~2 s epoch on this machine, measured bare.
    out = subprocess.run([py, "-c", "import time, numpy as np\nimport os\na=np.random.default_rng(4).standard_normal((160,160))\n"
                          "t=time.time(); x=a\nfor _ in range(2000): x=np.tanh(x@a*0.01)\nprint(time.time()-t)"],
                         capture_output=True, text=True, check=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    return max(100, int(2000 * 2.0 / float(out.stdout)))


def main():
    baton, store, mib, epochs, reps, work = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
    os.makedirs(work, exist_ok=True)
    trainer = os.path.join(work, "cpu_trainer.py")
    with open(trainer, "w") as f:
        f.write(TRAINER)
    py = sys.executable
    steps = calibrate(py, trainer)
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1", BATON_BIN=baton)
    rows = []
    for rep in range(reps):
        t = time.time()
        out = subprocess.run([py, trainer, str(mib), str(epochs), str(steps), os.path.join(work, "bare")], check=True, env=env,
                             stdout=subprocess.PIPE, text=True).stdout
        bare_wall = time.time() - t
        bare = json.loads(out.strip().splitlines()[-1])["compute"]
        t = time.time()
        out = subprocess.run([baton, "-q", "run", "--store", store, "--run-id", f"tp-{rep}-{os.getpid()}", "--dir",
                              os.path.join(work, f"ckpt-{rep}"), "--", py, trainer, str(mib), str(epochs), str(steps)],
                             check=True, env=env, stdout=subprocess.PIPE, text=True).stdout
        under_wall = time.time() - t
        under = json.loads(out.strip().splitlines()[-1])["compute"]
        row = {"compute_bare": bare, "compute_under_baton": under, "ratio": bare / under, "wall_bare": bare_wall,
               "wall_under_baton": under_wall, "steps_per_epoch": steps}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(json.dumps({"median_ratio": statistics.median(r["ratio"] for r in rows),
                      "median_compute_bare": statistics.median(r["compute_bare"] for r in rows),
                      "median_compute_under_baton": statistics.median(r["compute_under_baton"] for r in rows),
                      "median_wall_bare": statistics.median(r["wall_bare"] for r in rows),
                      "median_wall_under_baton": statistics.median(r["wall_under_baton"] for r in rows)}))


if __name__ == "__main__":
    main()
