"""A trainer shaped like a large model for the goodput benchmark: each epoch takes
--epoch-seconds of "compute" (sleep, as a GPU would keep the CPU free) in
--steps-per-epoch steps, and every save writes a --ckpt-mb float32 checkpoint in place
(as torch.save to a fixed path does), then commits with `baton commit`. On SIGTERM it
saves mid-epoch, commits and exits 143, like examples/trainer.py.

usage: ckpt_trainer.py [--epochs N] [--steps-per-epoch K] [--epoch-seconds S] [--ckpt-mb M]
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np

stop = False


def on_signal(signum, frame):
    global stop
    stop = True


def base_weights(mib):
    # Float-like and deterministic: a slow sine plus seeded noise, computed in float64
    # blocks (a float32 index repeats above 2**24, which would make the data repeat
    # and deduplicate unrealistically well).
    n = mib * (1 << 20) // 4
    out = np.empty(n, dtype=np.float32)
    rng = np.random.default_rng(7)
    block = 1 << 22
    for s in range(0, n, block):
        i = np.arange(s, min(s + block, n), dtype=np.float64)
        out[s:s + len(i)] = 0.05 * np.sin(i * 1e-4) + 0.01 * rng.standard_normal(len(i))
    return out


def save(ckpt, base, epoch, step, steps):
    # Every save changes every weight, as an optimizer step does.
    # No fsync, like torch.save: baton copies the files at commit time, from the page
    # cache, and makes its copy durable in the store.
    w = base * np.float32(1.0 + 1e-4 * (epoch * steps + step))
    with open(os.path.join(ckpt, "model.bin"), "wb") as f:
        w.tofile(f)
    with open(os.path.join(ckpt, "state.json"), "w") as f:
        json.dump({"epoch": epoch, "step": step}, f)


def commit(epoch, step, reason):
    if not os.environ.get("BATON_SOCKET"):
        return
    baton = os.environ.get("BATON_BIN", "baton")
    subprocess.run([baton, "commit", "--epoch", str(epoch), "--step", str(step), "--meta", f"reason={reason}"], check=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--steps-per-epoch", type=int, default=20)
    p.add_argument("--epoch-seconds", type=float, default=20.0)
    p.add_argument("--ckpt-mb", type=int, default=1024)
    a = p.parse_args()
    signal.signal(signal.SIGTERM, on_signal)
    ckpt = os.environ.get("BATON_CHECKPOINT_DIR", "./checkpoint")
    os.makedirs(ckpt, exist_ok=True)
    epoch, step = 0, 0
    state = os.path.join(ckpt, "state.json")
    if os.path.exists(state):
        with open(state) as f:
            s = json.load(f)
        epoch, step = s["epoch"], s["step"]
    print(f"ckpt_trainer: start at epoch {epoch} step {step} on {os.environ.get('BATON_DEVICE', '?')}", file=sys.stderr, flush=True)
    base = base_weights(a.ckpt_mb)
    dt = a.epoch_seconds / a.steps_per_epoch
    saved = (epoch, step) if os.path.exists(state) else None
    while epoch < a.epochs:
        while step < a.steps_per_epoch:
            if stop:
                # A checkpoint committed at this very step needs no second save.
                if saved != (epoch, step):
                    save(ckpt, base, epoch, step, a.steps_per_epoch)
                    commit(epoch, step, "eviction")
                print(f"ckpt_trainer: saved at epoch {epoch} step {step} on signal", file=sys.stderr, flush=True)
                sys.exit(143)
            time.sleep(dt)
            step += 1
        epoch, step = epoch + 1, 0
        save(ckpt, base, epoch, step, a.steps_per_epoch)
        commit(epoch, 0, "epoch")
        saved = (epoch, step)
        print(f"ckpt_trainer: epoch {epoch}/{a.epochs} committed", file=sys.stderr, flush=True)
    print("ckpt_trainer: done", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
