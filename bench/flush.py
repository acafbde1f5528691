"""Eviction flush: SIGTERM to a durable manifest, for a checkpoint of which 95% is
unchanged since the last durable one (issue 12). A trainer commits a checkpoint, waits
until it is durable, is sent SIGTERM, changes 5% of the weights (20 scattered regions),
saves, commits and exits; baton flushes and exits. Split: the trainer's own save and
commit, then baton's flush (commit to baton's exit, after the manifest is written).
FLUSH_SAVE_SECONDS (default 0: as fast as the page cache takes it) spreads the save on
SIGTERM over that many seconds, in 32 writes, as a GPU trainer's save is paced by copying
tensors off the device; FLUSH_CHANGE (default 0.05) is the fraction of weights changed.

usage: flush.py BATON STORE_URL MIB REPS WORKDIR  ->  one JSON line per repetition, then
       a summary line {"median_total": ..., ...}
"""

import json
import os
import signal
import statistics
import subprocess
import sys
import time

TRAINER = r'''
import os, signal, subprocess, sys, time
import numpy as np
d = os.environ["BATON_CHECKPOINT_DIR"]
mib = int(sys.argv[1])
n = mib * (1 << 20) // 4
rng = np.random.default_rng(abs(hash(os.environ["BATON_RUN_ID"])) % (1 << 32))  # new bytes each repetition
w = (0.05 * np.sin(np.arange(n, dtype=np.float64) * 1e-4) + 0.01 * rng.standard_normal(n)).astype(np.float32)
got = []
signal.signal(signal.SIGTERM, lambda s, f: got.append(time.time()))
w.tofile(os.path.join(d, "model.bin"))
pace = float(os.environ.get("FLUSH_SAVE_SECONDS", "0"))
change = float(os.environ.get("FLUSH_CHANGE", "0.05"))
subprocess.run([os.environ["BATON_BIN"], "commit", "--epoch", "1"], check=True)
print("READY", flush=True)
while not got:
    time.sleep(0.01)
t0 = time.time()
region = int(n // 20 * change)               # 20 regions, 5% of the weights in all
for k in range(20):
    s = k * (n // 20)
    w[s:s + region] *= np.float32(1.001)
with open(os.path.join(d, "model.bin"), "wb") as f:
    for piece in np.array_split(w, 32):
        piece.tofile(f)
        f.flush()
        time.sleep(pace / 32)
subprocess.run([os.environ["BATON_BIN"], "commit", "--epoch", "2"], check=False)
print("SAVED %.6f %.6f" % (got[0], time.time()), flush=True)
sys.exit(143)
'''


def once(baton, store, mib, work, rep):
    slot = os.path.join(work, f"slot-{rep}")
    os.makedirs(slot, exist_ok=True)
    env = dict(os.environ, BATON_BIN=baton)
    trainer = os.path.join(work, "flush_trainer.py")
    with open(trainer, "w") as f:
        f.write(TRAINER)
    run_id = f"flush-{rep}-{os.getpid()}"
    p = subprocess.Popen([baton, *os.environ.get("FLUSH_BATON_FLAGS", "-q").split(), "run", "--store", store, "--run-id", run_id, "--dir", os.path.join(slot, "ckpt"),
                          "--vacate-window", "60s", "--", sys.executable, trainer, str(mib)],
                         stdout=subprocess.PIPE, text=True, env=env, cwd=slot)
    assert p.stdout.readline().strip() == "READY"
    # Wait for checkpoint 1 to be durable, so that only the eviction's checkpoint is flushed.
    while True:
        out = subprocess.run([baton, "-q", "inspect", "--store", store, run_id, "--json"], capture_output=True, text=True)
        if out.returncode == 0 and json.loads(out.stdout)["checkpoints"]:
            break
        time.sleep(0.1)
    time.sleep(0.5)
    sent = time.time()
    p.send_signal(signal.SIGTERM)
    line = p.stdout.readline().split()
    p.wait()
    gone = time.time()
    saved = float(line[2])
    m = json.loads(subprocess.run([baton, "-q", "inspect", "--store", store, run_id, "2", "--json"], capture_output=True,
                                  text=True, check=True).stdout)
    return {"total": gone - sent, "trainer_save": saved - sent, "flush": gone - saved,
            "new_bytes": m["sizes"]["new_bytes"], "logical_bytes": m["sizes"]["logical_bytes"]}


def main():
    baton, store, mib, reps, work = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    os.makedirs(work, exist_ok=True)
    rows = []
    for rep in range(reps):
        r = once(baton, store, mib, work, rep)
        rows.append(r)
        print(json.dumps(r), flush=True)
    med = {k: statistics.median(r[k] for r in rows) for k in ("total", "trainer_save", "flush")}
    print(json.dumps({"median_" + k: v for k, v in med.items()} | {"runs": [r["total"] for r in rows]}))


if __name__ == "__main__":
    main()
