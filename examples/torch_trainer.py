#!/usr/bin/env python3
"""A plain PyTorch trainer under baton: an MLP with dropout on scikit-learn's bundled
digits (1,797 8x8 images, no download), Adam, minibatches from baton_ckpt's resumable
sampler. CPU or GPU unchanged; deterministic on one device type, so an evicted and
resumed run ends with the very weights of an uninterrupted one.

The baton parts are marked `# baton`: the five lines of docs/pytorch.md.

Exit codes: 0 finished (`digest: <sha256 of the final weights>` on stdout), 143 saved
and committed after SIGTERM.
"""
import os
import sys

try:
    import baton_ckpt as bc
except ImportError:     # run from a checkout: the helper lives in python/
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
    import baton_ckpt as bc

bc.install_signal_handlers()    # baton: before the slow imports below
# Deterministic cuBLAS (needed by use_deterministic_algorithms on a GPU; unused on CPU).
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import argparse
import hashlib
import random
import time

import numpy as np

import torch
import torch.nn.functional as F


def log(msg):
    # One write per line: baton logs to the same stderr, and print() writes the text and
    # its newline separately, so a baton line could land between them (seen in a test).
    sys.stderr.write(f"trainer: {msg}\n")
    sys.stderr.flush()


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64, help="effective batch size (what the optimizer sees)")
    p.add_argument("--max-micro-batch", type=int, default=0,
                   help="most samples per forward pass on this slot (0: the whole batch); "
                        "gradients are accumulated to keep --batch-size")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--commit-every", type=int, default=10, help="commit every N optimizer steps (0: epochs only)")
    p.add_argument("--step-seconds", type=float, default=0.0, help="sleep per step (tests: room for signals)")
    p.add_argument("--trace", action="store_true", help="print one `batch` line per step to stderr")
    p.add_argument("--bug", choices=["none", "no-sampler", "no-rng"], default="none",
                   help="resume without the sampler position or without the RNG states (tests)")
    return p.parse_args()


def load_data(device):
    from sklearn.datasets import load_digits
    x, y = load_digits(return_X_y=True)
    return (torch.tensor(x, dtype=torch.float32, device=device) / 16.0,
            torch.tensor(y, dtype=torch.int64, device=device))


def digest(model):
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def main():
    args = parse_args()
    info = bc.restored()
    log(f"attempt={info.attempt} restored_seq={info.seq} restored_epoch={info.epoch} "
        f"restored_step={info.step} device={info.device} prev_device={info.prev_device}")
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    random.seed(args.seed)          # unused by training, but saved with the checkpoint:
    np.random.seed(args.seed)       # seeded, so the final file is the same in every run
    device = bc.current_device()

    x, y = load_data(device)
    model = torch.nn.Sequential(
        torch.nn.Linear(64, args.hidden), torch.nn.ReLU(), torch.nn.Dropout(0.2),
        torch.nn.Linear(args.hidden, 10)).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    sampler = bc.ResumableSampler(len(x), seed=args.seed)
    micro, accum = bc.plan_batches(args.batch_size, args.max_micro_batch or args.batch_size)
    steps_per_epoch = len(x) // args.batch_size     # the last partial batch is dropped

    pos = bc.resume(model=model, optimizer=opt,                                    # baton
                    sampler=None if args.bug == "no-sampler" else sampler)
    if pos["resumed"] and args.bug == "no-rng":
        torch.manual_seed(args.seed + 1)
    epoch, step = pos["epoch"], pos["step"]
    log(f"resumed at epoch {epoch} step {step}" if pos["resumed"] else "fresh start")

    while epoch < args.epochs:
        sampler.set_epoch(epoch)
        if args.bug == "no-sampler":
            sampler.consumed = sampler._start = 0
        order = iter(sampler)
        model.train()
        while step < steps_per_epoch:
            if bc.eviction_requested():                                            # baton
                bc.save_training_state(model=model, optimizer=opt, epoch=epoch, step=step, sampler=sampler)
                bc.commit(epoch=epoch, step=step, reason="eviction")
                log(f"saved at epoch {epoch} step {step} on signal")
                return 143
            idx = [next(order) for _ in range(args.batch_size)]
            sampler.consumed += args.batch_size
            opt.zero_grad(set_to_none=True)
            total = 0.0
            for m in range(accum):
                part = torch.tensor(idx[m * micro:(m + 1) * micro], device=device)
                loss = F.cross_entropy(model(x[part]), y[part]) / accum
                loss.backward()
                total += loss.item()
            opt.step()
            step += 1
            if args.trace:
                ih = hashlib.sha256(repr(idx).encode()).hexdigest()[:16]
                log(f"batch {epoch} {step - 1} {ih} {float(total).hex()}")
            if args.commit_every and step % args.commit_every == 0 and step < steps_per_epoch:
                bc.save_training_state(model=model, optimizer=opt, epoch=epoch, step=step, sampler=sampler)
                seq = bc.commit(epoch=epoch, step=step)
                log(f"committed epoch {epoch} step {step} seq {seq}")
            time.sleep(args.step_seconds)
        epoch, step = epoch + 1, 0
        log(f"epoch {epoch}/{args.epochs} loss {total:.4f}")
        if epoch < args.epochs:
            sampler.set_epoch(epoch)
            bc.save_training_state(model=model, optimizer=opt, epoch=epoch, step=0, sampler=sampler)
            seq = bc.commit(epoch=epoch, step=0)
            log(f"committed epoch {epoch} step 0 seq {seq}")

    # Exit 0: baton captures this as the final checkpoint.
    bc.save_training_state(model=model, optimizer=opt, epoch=epoch, step=0, sampler=sampler)
    print(f"digest: {digest(model)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
