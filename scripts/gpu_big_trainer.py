#!/usr/bin/env python3
"""A large model for scripts/gpu_check.sh: GIB GiB of fp32 parameters plus Adam's two
moments (3x in all) on the GPU, a step loop, and on SIGTERM: save through baton_ckpt,
commit, report how long each took, exit 143. Not a real model: one flat Linear stack."""
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
import baton_ckpt as bc  # noqa: E402

bc.install_signal_handlers()
import torch  # noqa: E402

gib = float(sys.argv[1]) if len(sys.argv) > 1 else 2.0
dev = bc.current_device()
width = 8192
layers = max(1, int(gib * 2**30 / 4 / (width * width)))
model = torch.nn.Sequential(*[torch.nn.Linear(width, width, bias=False) for _ in range(layers)]).to(dev)
opt = torch.optim.Adam(model.parameters(), lr=1e-5)
x = torch.randn(8, width, device=dev)
params = sum(p.numel() for p in model.parameters())
print(f"big: {layers} layers, {params * 4 / 2**30:.2f} GiB of parameters, {3 * params * 4 / 2**30:.2f} GiB with Adam, on {dev}",
      file=sys.stderr, flush=True)
step = 0
while True:
    if bc.eviction_requested():
        t0 = time.time()
        bc.save_training_state(model=model, optimizer=opt, epoch=0, step=step)
        t1 = time.time()
        seq = bc.commit(epoch=0, step=step)
        t2 = time.time()
        print(f"big: save_seconds={t1 - t0:.3f} commit_seconds={t2 - t1:.3f} committed_at={t2:.3f} seq={seq} "
              f"file_bytes={os.path.getsize(os.path.join(bc.checkpoint_dir(), bc.CHECKPOINT_FILE))}",
              file=sys.stderr, flush=True)
        sys.exit(143)
    opt.zero_grad(set_to_none=True)
    model(x).square().mean().backward()
    opt.step()
    step += 1
    if step == 2:
        torch.cuda.synchronize() if dev.type == "cuda" else None
        print("big: ready", file=sys.stderr, flush=True)
