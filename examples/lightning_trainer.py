#!/usr/bin/env python3
"""A PyTorch Lightning 2.x trainer under baton: the MLP of torch_trainer.py on
scikit-learn's bundled digits, with baton_ckpt.BatonCallback doing the checkpoint work
(save through Lightning into $BATON_CHECKPOINT_DIR, commit, save on eviction, resume).
CPU or GPU unchanged; deterministic on one device type.

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

bc.install_signal_handlers()    # before the slow imports below

import argparse
import hashlib
import time
import warnings

import torch
import torch.nn.functional as F

try:
    import lightning.pytorch as pl
except ImportError:
    import pytorch_lightning as pl


def log(msg):
    # One write per line: baton logs to the same stderr, and print() writes the text and
    # its newline separately, so a baton line could land between them (seen in a test).
    sys.stderr.write(f"trainer: {msg}\n")
    sys.stderr.flush()


class Digits(pl.LightningModule):
    def __init__(self, hidden, lr, step_seconds, trace):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(64, hidden), torch.nn.ReLU(), torch.nn.Dropout(0.2), torch.nn.Linear(hidden, 10))
        self.lr, self.step_seconds, self.trace = lr, step_seconds, trace

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self.net(x), y)
        if self.trace:
            ih = hashlib.sha256(repr(y.tolist()).encode() + x.cpu().numpy().tobytes()).hexdigest()[:16]
            log(f"batch {self.current_epoch} {batch_idx} {ih} {float(loss.item()).hex()}")
        time.sleep(self.step_seconds)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def digest(model):
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--commit-every", type=int, default=10, help="commit every N optimizer steps (0: epochs only)")
    p.add_argument("--step-seconds", type=float, default=0.0)
    p.add_argument("--trace", action="store_true")
    args = p.parse_args()

    info = bc.restored()
    log(f"attempt={info.attempt} restored_seq={info.seq} restored_epoch={info.epoch} "
        f"restored_step={info.step} device={info.device} prev_device={info.prev_device}")
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    torch.set_num_threads(1)
    pl.seed_everything(args.seed, verbose=False)

    from sklearn.datasets import load_digits
    xs, ys = load_digits(return_X_y=True)
    data = torch.utils.data.TensorDataset(torch.tensor(xs, dtype=torch.float32) / 16.0,
                                          torch.tensor(ys, dtype=torch.int64))
    loader = bc.ResumableDataLoader(data, batch_size=args.batch_size, seed=args.seed, drop_last=True)
    model = Digits(args.hidden, args.lr, args.step_seconds, args.trace)

    trainer = pl.Trainer(
        max_epochs=args.epochs, accelerator="auto", devices=1, deterministic=True,
        callbacks=[bc.BatonCallback(every_n_steps=args.commit_every or None)],
        plugins=bc.lightning_plugins(),
        logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(model, train_dataloaders=loader, ckpt_path=bc.BatonCallback.ckpt_path())
    print(f"digest: {digest(model)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
