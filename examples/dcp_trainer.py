#!/usr/bin/env python3
"""DistributedDataParallel on several nodes under baton, saving with
torch.distributed.checkpoint (DCP): a small MLP on synthetic data, gloo on CPU. On every
node (docs/htcondor.md, section 6):

    baton run --run-id R --nodes 2 --node-rank K -- sh -c 'exec torchrun --nnodes "$NNODES" \\
        --node-rank "$NODE_RANK" --nproc-per-node 1 --master-addr "$MASTER_ADDR" \\
        --master-port "$MASTER_PORT" examples/dcp_trainer.py'

- A checkpoint is DCP's: every rank writes its shard (`__<rank>_0.distcp`) into its node's
  $BATON_CHECKPOINT_DIR, rank 0 also `.metadata`; each node's local rank 0 then commits
  that directory to its own baton, which uploads it as the node's part of the checkpoint.
  Before saving, local rank 0 removes the previous save's files: a directory baton
  restored holds every node's shards, and a stale one would be committed again (baton
  refuses a checkpoint whose parts disagree on a file) or loaded by DCP without a word.
- Resume: baton restores every node's part into every node's directory, so DCP finds
  `.metadata` and all shards, also on another number of nodes (it reshards).
- Stop: the ranks all_reduce their eviction flags at every step, so when one node is
  evicted every node saves the same step and commits its part of it, then exits 143.
- The data position counts global batches (--batch-size over all ranks; rank r trains on
  every world-th sample of it), so a resume on another world size continues with the
  same samples; no dropout, so no per-rank random state is needed.

Exit codes: 0 finished (global rank 0 prints `digest: <sha256 of the final weights>`),
143 saved and committed after an eviction (torchrun itself then exits 1).
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
import glob
import hashlib
import time

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.nn.functional as F
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.nn.parallel import DistributedDataParallel as DDP

RANK = int(os.environ.get("RANK", "0"))
LOCAL_RANK = int(os.environ.get("LOCAL_RANK", "0"))


def log(msg):
    sys.stderr.write(f"trainer[{RANK}]: {msg}\n")
    sys.stderr.flush()


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64, help="global batch size (all ranks together)")
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--commit-every", type=int, default=5, help="commit every N optimizer steps (0: epochs only)")
    p.add_argument("--step-seconds", type=float, default=0.0, help="sleep per step (tests: room for signals)")
    p.add_argument("--trace", action="store_true", help="one `batch` line per step and rank on stderr")
    return p.parse_args()


def load_data(n=1024, features=16, classes=4):
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
    restored_nodes = os.environ.get("BATON_RESTORED_NODES")
    log(f"world={world} node={os.environ.get('NODE_RANK', '0')} pid={os.getpid()} attempt={info.attempt} "
        f"restored_seq={info.seq} restored_nodes={restored_nodes}")
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    x, y = load_data()
    model = torch.nn.Sequential(
        torch.nn.Linear(x.shape[1], args.hidden), torch.nn.ReLU(), torch.nn.Linear(args.hidden, int(y.max()) + 1))
    ddp = DDP(model)
    opt = torch.optim.Adam(ddp.parameters(), lr=args.lr)
    sampler = bc.ResumableSampler(len(x), seed=args.seed)
    steps_per_epoch = len(x) // args.batch_size
    ckpt = bc.checkpoint_dir()

    epoch, step = 0, 0
    if info.seq is not None:
        # baton: every node's directory holds every node's part; DCP loads (and reshards).
        msd, osd = get_state_dict(ddp, opt)
        state = {"model": msd, "optim": osd, "progress": torch.zeros(2, dtype=torch.int64)}
        dcp.load(state, checkpoint_id=ckpt)
        set_state_dict(ddp, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
        epoch, step = (int(v) for v in state["progress"])
        log(f"resumed at epoch {epoch} step {step}")
    else:
        log("fresh start")

    def checkpoint(epoch, step, commit_reason=None):
        dist.barrier()      # every rank is done with the previous save's files
        if LOCAL_RANK == 0:
            for stale in glob.glob(os.path.join(ckpt, "*.distcp")) + glob.glob(os.path.join(ckpt, ".metadata")):
                os.remove(stale)
        dist.barrier()
        msd, osd = get_state_dict(ddp, opt)
        dcp.save({"model": msd, "optim": osd, "progress": torch.tensor([epoch, step])}, checkpoint_id=ckpt)
        dist.barrier()      # every shard of every node is written
        if commit_reason is not None:
            if LOCAL_RANK == 0:
                seq = bc.commit(epoch=epoch, step=step, reason=commit_reason, world=world)
                log(f"committed epoch {epoch} step {step} seq {seq}")
            dist.barrier()  # no rank writes again before every node's baton has the files

    while epoch < args.epochs:
        sampler.set_epoch(epoch)
        order = sampler.order()
        ddp.train()
        while step < steps_per_epoch:
            stop = torch.tensor([int(bc.eviction_requested())])
            dist.all_reduce(stop, op=dist.ReduceOp.MAX)     # baton: every node stops at this step
            if stop.item():
                own = bc.eviction_requested()
                checkpoint(epoch, step, "eviction")
                dist.destroy_process_group()
                log(f"stopped at epoch {epoch} step {step} (own signal: {own})")
                return 143
            batch = order[step * args.batch_size:(step + 1) * args.batch_size]
            mine = torch.tensor(batch[rank::world])
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(ddp(x[mine]), y[mine])
            loss.backward()
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
            checkpoint(epoch, 0, "epoch")

    # Exit 0 on every rank: each node's baton captures its directory as its final part.
    checkpoint(epoch, 0)
    if rank == 0:
        print(f"digest: {digest(model)}", flush=True)
        # The weights themselves (float32, little-endian, hex), for comparisons across
        # world sizes, where equality is not to be had.
        flat = torch.cat([t.detach().reshape(-1) for _, t in sorted(model.state_dict().items())])
        print(f"params: {flat.to(torch.float32).numpy().astype('<f4').tobytes().hex()}", flush=True)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
