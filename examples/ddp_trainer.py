#!/usr/bin/env python3
"""DistributedDataParallel on one node under baton: a small MLP with dropout on synthetic
data, one process per rank started by torchrun, gloo on CPU (on GPUs: NCCL and one
device per rank, not done or tried here). Run it as

    baton run -- torchrun --standalone --nproc-per-node 2 examples/ddp_trainer.py

What DDP adds to the plain loop (docs/pytorch.md, "DDP on one node"):

- baton's SIGTERM reaches torchrun, which forwards it to every worker; each worker's
  baton_ckpt handler sets its own flag. The ranks agree at every step boundary with an
  all_reduce (MAX) of their flags, so all stop at the same step even when the signal
  lands between two steps on one rank and not yet on the other.
- A checkpoint: rank 0 writes train.pt (model, optimizer, data position, its RNG states),
  every other rank its own RNG states (rng-rank<r>.pt: dropout draws differ per rank);
  a barrier (every file is written); rank 0 alone commits; a second barrier (no rank
  writes again, or exits, before baton has captured the files).
- Resume: every rank loads the restored train.pt, then its own RNG file. The checkpoint
  is for this world size: the data split and the RNG files are per rank.
- The data position counts global batches: each step takes the next --batch-size indices of the
  epoch's order and rank r trains on every world-th of them.

Exit codes: 0 finished (rank 0 prints `digest: <sha256 of the final weights>`), 143 saved
and committed after SIGTERM (torchrun itself then exits 1).
"""
import os
import sys

try:
    import baton_ckpt as bc
except ImportError:     # run from a checkout: the helper lives in python/
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
    import baton_ckpt as bc

bc.install_signal_handlers()    # baton: before the slow imports below

import argparse
import hashlib
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

RANK = int(os.environ.get("RANK", "0"))


def log(msg):
    # One write per line (baton and the other rank write to the same stderr).
    sys.stderr.write(f"trainer[{RANK}]: {msg}\n")
    sys.stderr.flush()


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64, help="global batch size (all ranks together)")
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--commit-every", type=int, default=10, help="commit every N optimizer steps (0: epochs only)")
    p.add_argument("--step-seconds", type=float, default=0.0, help="sleep per step (tests: room for signals)")
    p.add_argument("--trace", action="store_true", help="one `batch` line per step and rank on stderr")
    return p.parse_args()


def load_data(n=1024, features=16, classes=4):
    # Synthetic and tiny (no scikit-learn import: every rank pays for its imports at
    # start): a fixed random linear teacher labels random points.
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(n, features, generator=g)
    teacher = torch.randn(features, classes, generator=g)
    return x, (x @ teacher + 0.5 * torch.randn(n, classes, generator=g)).argmax(dim=1)


def digest(model):
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def main():
    args = parse_args()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    info = bc.restored()
    log(f"world={world} pid={os.getpid()} attempt={info.attempt} restored_seq={info.seq} restored_step={info.step}")
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)        # the same initial weights on every rank
    x, y = load_data()
    model = torch.nn.Sequential(
        torch.nn.Linear(x.shape[1], args.hidden), torch.nn.ReLU(), torch.nn.Dropout(0.2),
        torch.nn.Linear(args.hidden, int(y.max()) + 1))
    ddp = DDP(model)
    opt = torch.optim.Adam(ddp.parameters(), lr=args.lr)
    sampler = bc.ResumableSampler(len(x), seed=args.seed)
    steps_per_epoch = len(x) // args.batch_size
    torch.manual_seed(args.seed * 1_000_003 + 1 + rank)     # each rank its own dropout stream

    def rng_file(r):
        return f"rng-rank{r}.pt"

    # baton: every rank loads the restored checkpoint (one directory on one node).
    pos = bc.resume(model=model, optimizer=opt, sampler=sampler)
    if pos["resumed"] and rank != 0:
        bc.restore_rng(bc.load(rng_file(rank))["rng"])
    epoch, step = pos["epoch"], pos["step"]
    log(f"resumed at epoch {epoch} step {step}" if pos["resumed"] else "fresh start")

    def checkpoint(epoch, step, commit_reason=None):
        # baton: every rank writes its part, barrier, rank 0 commits, barrier.
        sampler.consumed = step * args.batch_size
        if rank == 0:
            bc.save_training_state(model=model, optimizer=opt, epoch=epoch, step=step, sampler=sampler)
        else:
            bc.save({"rng": bc.capture_rng()}, rng_file(rank))
        dist.barrier()
        if commit_reason is not None:
            if rank == 0:
                seq = bc.commit(epoch=epoch, step=step, reason=commit_reason, world=world)
                log(f"committed epoch {epoch} step {step} seq {seq}")
            dist.barrier()

    while epoch < args.epochs:
        sampler.set_epoch(epoch)
        order = sampler.order()
        ddp.train()
        while step < steps_per_epoch:
            stop = torch.tensor([int(bc.eviction_requested())])
            dist.all_reduce(stop, op=dist.ReduceOp.MAX)                  # baton: agree
            if stop.item():
                own = bc.eviction_requested()
                checkpoint(epoch, step, "eviction")
                dist.destroy_process_group()
                # Whether this rank's own handler saw a signal: when the ranks agreed,
                # and now, at the last moment before exiting (tests read this).
                log(f"stopped at epoch {epoch} step {step} (own signal: {own}, now: {bc.eviction_requested()})")
                return 143
            batch = order[step * args.batch_size:(step + 1) * args.batch_size]
            mine = torch.tensor(batch[rank::world])
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(ddp(x[mine]), y[mine])
            loss.backward()                 # DDP averages the gradients over the ranks
            opt.step()
            step += 1
            if args.trace:
                ih = hashlib.sha256(repr(batch).encode()).hexdigest()[:16]
                log(f"batch {epoch} {step - 1} {rank} {ih} {float(loss.item()).hex()}")
            if args.commit_every and step % args.commit_every == 0 and step < steps_per_epoch:
                checkpoint(epoch, step, "steps")
            time.sleep(args.step_seconds)
        epoch, step = epoch + 1, 0
        if epoch < args.epochs:
            sampler.set_epoch(epoch)
            checkpoint(epoch, 0, "epoch")

    # Exit 0 on every rank: baton captures the directory as the final checkpoint.
    checkpoint(epoch, 0)
    if rank == 0:
        print(f"digest: {digest(model)}", flush=True)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
