"""baton_ckpt: the trainer side of baton (docs/pytorch.md in baton's source tree).

One file, standard library only at import time, so it can be shipped next to a training
script with HTCondor's ``transfer_input_files`` as well as installed as the ``baton-ckpt``
wheel. The torch helpers import torch when first called; the Lightning callback imports
Lightning when first named (``baton_ckpt.BatonCallback``).

The core, usable by any Python trainer::

    import baton_ckpt as bc
    bc.install_signal_handlers()        # first thing: before `import torch` (seconds)
    bc.checkpoint_dir()                 # $BATON_CHECKPOINT_DIR, else ./checkpoint
    bc.restored()                       # what baton restored: seq, epoch, step, devices ...
    bc.eviction_requested()             # True once SIGTERM (or another eviction signal) came
    bc.commit(epoch=3, step=0, loss="0.41")   # seq; False outside baton (logged once)

Torch (docs/pytorch.md has the five-line change to an existing loop)::

    pos = bc.resume(model=model, optimizer=opt, scaler=scaler, sampler=sampler)
    ...
    bc.save_training_state(model=model, optimizer=opt, scaler=scaler, epoch=e, step=s,
                           sampler=sampler)
    bc.commit(epoch=e, step=s)

Nothing here talks to the store: upload, restore and verification are baton's job.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading

__version__ = "0.1.0"

__all__ = [
    "Restored", "checkpoint_dir", "restored", "under_baton", "commit", "CommitError",
    "install_signal_handlers", "eviction_requested", "request_eviction",
    "current_device", "save", "load", "capture_rng", "restore_rng", "ResumableSampler",
    "ResumableDataLoader", "worker_init_fn", "save_training_state", "resume",
    "plan_batches", "BatonCallback", "lightning_plugins", "CHECKPOINT_FILE",
]

CHECKPOINT_FILE = "train.pt"
"""The file name save_training_state() and resume() use inside the checkpoint directory."""

EVICTION_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2")
"""The signals baton forwards on an eviction (docs/protocol.md)."""


def _log(msg):
    print(f"baton_ckpt: {msg}", file=sys.stderr, flush=True)


# --- where, and what was restored -----------------------------------------------------

def under_baton():
    """True when this process runs under `baton run` (it set $BATON_SOCKET)."""
    return bool(os.environ.get("BATON_SOCKET"))


def checkpoint_dir(create=True):
    """Where to read and write checkpoint files: $BATON_CHECKPOINT_DIR under baton, else
    ./checkpoint, so the same script runs unchanged without baton."""
    path = os.path.abspath(os.environ.get("BATON_CHECKPOINT_DIR") or "checkpoint")
    if create:
        os.makedirs(path, exist_ok=True)
    return path


class Restored:
    """What baton restored into the checkpoint directory before starting the command.

    ``seq``, ``epoch`` and ``step`` are None on a fresh start (and outside baton);
    ``prev_device`` is the device the restored checkpoint was written on. Take the resume
    position from your own checkpoint files: these are for logging and for decisions such
    as the micro-batch size.
    """

    __slots__ = ("seq", "epoch", "step", "device", "prev_device", "attempt", "run_id")

    def __init__(self, env=None):
        env = os.environ if env is None else env

        def num(key):
            v = env.get(key)
            try:
                return int(v) if v not in (None, "") else None
            except ValueError:
                return None

        self.seq = num("BATON_RESTORED_SEQ")
        self.epoch = num("BATON_RESTORED_EPOCH")
        self.step = num("BATON_RESTORED_STEP")
        self.device = env.get("BATON_DEVICE") or None
        self.prev_device = env.get("BATON_PREV_DEVICE") or None
        self.attempt = num("BATON_ATTEMPT") or 1
        self.run_id = env.get("BATON_RUN_ID") or None

    @property
    def device_changed(self):
        """True when the checkpoint was written on another kind of device than this one."""
        return bool(self.prev_device and self.device and self.prev_device != self.device)

    def __repr__(self):
        fields = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.__slots__)
        return f"Restored({fields})"


def restored():
    """The environment baton set, read now (see Restored)."""
    return Restored()


# --- committing -----------------------------------------------------------------------

class CommitError(RuntimeError):
    """baton refused the commit (empty directory, a file changed while it was copied ...)."""


_warned_outside = False


def commit(epoch=None, step=None, **meta):
    """Tell baton that the checkpoint directory holds a complete checkpoint.

    Returns the checkpoint's seq once baton has captured the files (from then on they may
    be overwritten). Outside baton ($BATON_SOCKET unset) it commits nothing, says so once
    on stderr, and returns False. Raises CommitError when baton refuses, or when it cannot
    be reached at all.

    The request goes to $BATON_SOCKET. When that socket cannot be used from this process
    (the connection or the sending fails, so nothing reached baton), the same request goes
    through `$BATON_BIN commit` (else `baton` on PATH): the same socket from another
    process, which helps when this process's sockets are the problem (a sandbox, a
    patched socket module), not when baton is gone; then CommitError says what both
    said. A reply lost after the request was sent is not retried: baton may have
    captured it, and the error says so.
    """
    global _warned_outside
    path = os.environ.get("BATON_SOCKET")
    if not path:
        if not _warned_outside:
            _log("not running under baton ($BATON_SOCKET unset): nothing is committed")
            _warned_outside = True
        return False
    req = {"epoch": None if epoch is None else int(epoch),
           "step": None if step is None else int(step),
           "meta": {str(k): str(v) for k, v in meta.items()}}
    try:
        reply = _commit_socket(path, req)
    except _NotSent as e:
        _log(f"commit socket {path} unusable ({e.__cause__}); trying `baton commit`")
        reply = _commit_binary(req, f"the commit socket {path} is unusable ({e.__cause__})")
    if not reply.get("ok"):
        raise CommitError(f"baton refused the commit: {reply.get('error', 'no reply')}")
    return int(reply["seq"])


class _NotSent(Exception):
    """The request never reached baton (so trying another way cannot commit twice)."""


def _commit_socket(path, req):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(path)
            s.sendall((json.dumps(req) + "\n").encode())
            s.shutdown(socket.SHUT_WR)
        except OSError as e:
            raise _NotSent() from e
        try:
            # Blocks until baton has copied the files: that is the point of a commit.
            line = s.makefile("r").readline()
        except OSError as e:
            raise CommitError(f"no reply from baton on {path} ({e}): the commit may or may not have been captured")
    return json.loads(line) if line else {"ok": False, "error": "baton closed the socket without a reply"}


def _commit_binary(req, why):
    """`baton commit --json` with the same request: its reply, or CommitError."""
    exe = os.environ.get("BATON_BIN") or shutil.which("baton")
    if not exe:
        raise CommitError(f"cannot commit: {why}, and there is no baton binary to fall back on "
                          "($BATON_BIN unset, no `baton` on PATH); baton confirmed no commit")
    cmd = [exe, "commit", "--json"]
    if req["epoch"] is not None:
        cmd += ["--epoch", str(req["epoch"])]
    if req["step"] is not None:
        cmd += ["--step", str(req["step"])]
    for k, v in req["meta"].items():
        cmd += ["--meta", f"{k}={v}"]
    try:
        out = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    except OSError as e:
        raise CommitError(f"cannot commit: {why}, and {exe} cannot be run ({e}); baton confirmed no commit") from None
    lines = out.stdout.strip().splitlines()
    try:
        reply = json.loads(lines[-1]) if lines else None
    except ValueError:
        reply = None
    if isinstance(reply, dict) and (reply.get("ok") is False or (out.returncode == 0 and "seq" in reply)):
        return reply
    raise CommitError(f"cannot commit: {why}, and `{exe} commit` exited {out.returncode}: "
                      f"{out.stderr.strip() or 'no message'}; baton confirmed no commit")


# --- eviction -------------------------------------------------------------------------

_evicted = threading.Event()
_installed = {}


def eviction_requested():
    """True once an eviction signal arrived (after install_signal_handlers())."""
    return _evicted.is_set()


def request_eviction():
    """Set the eviction flag by hand (tests, or a trainer's own preemption notice)."""
    _evicted.set()


def install_signal_handlers(signals=("SIGTERM",)):
    """Make the given signals set the eviction flag. Idempotent.

    A handler that was installed before (a framework's, or the trainer's own) is still
    called after the flag is set; the default action (terminate) and SIG_IGN are not
    chained, since the point is to survive the signal until the next step boundary.
    Call it first thing, before `import torch`: until then a SIGTERM kills the process.
    Only SIGTERM by default: SIGINT stays KeyboardInterrupt for interactive runs.
    """
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("install_signal_handlers() must be called from the main thread")
    for name in signals:
        sig = getattr(signal, name) if isinstance(name, str) else signal.Signals(name)
        if sig in _installed:
            continue
        previous = signal.getsignal(sig)

        def handler(signum, frame, _previous=previous):
            _evicted.set()
            if callable(_previous) and _previous not in (signal.SIG_DFL, signal.SIG_IGN):
                _previous(signum, frame)

        signal.signal(sig, handler)
        _installed[sig] = handler


def _reinstall_handlers():
    """Put baton_ckpt's handlers back on top (after a framework replaced them)."""
    for sig, handler in _installed.items():
        if signal.getsignal(sig) is not handler:
            signal.signal(sig, handler)


def worker_init_fn(worker_id, _chain=None):
    """DataLoader ``worker_init_fn``: workers ignore the eviction signals baton forwards to
    the whole process group, so only the main process decides (a worker killed by SIGTERM
    makes PyTorch raise in the main process before it can save). To keep your own
    initialiser: ``functools.partial(baton_ckpt.worker_init_fn, _chain=your_fn)``."""
    for name in EVICTION_SIGNALS:
        if name != "SIGINT":    # workers already ignore SIGINT in PyTorch
            signal.signal(getattr(signal, name), signal.SIG_IGN)
    if _chain is not None:
        _chain(worker_id)


# --- torch: devices, atomic save, device-independent load ------------------------------

def _torch():
    import torch
    return torch


def current_device():
    """cuda:<current> when this slot has a GPU torch can use, else cpu."""
    torch = _torch()
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def save(obj, name=CHECKPOINT_FILE, directory=None):
    """torch.save(obj) into the checkpoint directory atomically: a temporary file in the
    same directory, fsync, rename over `name`, fsync the directory. Never commit while
    this runs. Returns the path."""
    torch = _torch()
    directory = directory or checkpoint_dir()
    path = os.path.join(directory, name)
    tmp = os.path.join(directory, f".{name}.baton-tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return path


def load(name=CHECKPOINT_FILE, directory=None, map_location=None, weights_only=True):
    """torch.load a file of the checkpoint directory onto this slot's device, whatever
    device wrote it (a cuda:3 tensor lands on cpu on a CPU slot, on cuda:0 on a one-GPU
    slot). None when the file does not exist (a fresh start)."""
    torch = _torch()
    directory = directory or checkpoint_dir()
    path = os.path.join(directory, name)
    stale = os.path.join(directory, f".{name}.baton-tmp")
    if os.path.exists(stale):
        os.remove(stale)        # a save that never finished: not part of any checkpoint
    if not os.path.exists(path):
        return None
    obj = torch.load(path, map_location=map_location or current_device(), weights_only=weights_only)
    return _intern_strings(obj)


def _intern_strings(obj):
    """Intern the strings of a loaded checkpoint, in place where possible.

    pickle writes a string once per object, then refers back to it: in a fresh run the
    optimizer's 'step' key and the checkpoint's own 'step' key are one interned object,
    after a resume the optimizer's is a copy unpickled from the file. Same content,
    different bytes, and `baton simulate --verify` compares bytes. Interning makes the
    checkpoint of a resumed run byte-identical to an uninterrupted run's.
    """
    if isinstance(obj, str):
        return sys.intern(obj)
    if isinstance(obj, dict):
        items = [(_intern_strings(k), _intern_strings(v)) for k, v in obj.items()]
        obj.clear()
        obj.update(items)
        return obj
    if isinstance(obj, list):
        obj[:] = [_intern_strings(v) for v in obj]
        return obj
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(_intern_strings(v) for v in obj)
    return obj


# --- RNG states -----------------------------------------------------------------------

def capture_rng():
    """Every RNG state a training step may draw from: Python's `random`, NumPy's global
    RNG (when NumPy is installed), torch's CPU generator and every CUDA device's. Stored
    as plain ints, lists and uint8 CPU tensors, so torch.load(weights_only=True) reads it
    and it loads on any device."""
    import random
    torch = _torch()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(), "cuda": [], "numpy": None}
    if torch.cuda.is_available():
        state["cuda"] = [t.cpu() for t in torch.cuda.get_rng_state_all()]
    np = sys.modules.get("numpy")
    if np is not None:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        state["numpy"] = {"kind": kind, "keys": torch.from_numpy(keys.astype("int64")),
                          "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(gauss)}
    return state


def restore_rng(state):
    """Put back what capture_rng() took. CUDA states go to as many devices as both slots
    have (a checkpoint from a GPU slot restores on a CPU slot without them); a device
    this slot has and the old one did not keeps its seed."""
    import random
    torch = _torch()
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") and torch.cuda.is_available():
        for i, t in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(t.cpu(), i)
    if state.get("numpy") is not None:
        try:
            import numpy as np
        except ImportError:
            return
        n = state["numpy"]
        np.random.set_state((n["kind"], n["keys"].cpu().numpy().astype("uint32"), n["pos"],
                             n["has_gauss"], n["gauss"]))


# --- data position --------------------------------------------------------------------

class ResumableSampler:
    """A sampler whose order is a pure function of (seed, epoch), with a position.

    Each epoch is a permutation of range(n) drawn from torch.Generator(seed + epoch) (or
    range(n) in order with shuffle=False). `state_dict()` records the epoch and how many
    samples were consumed; after `load_state_dict()` the next iteration yields exactly
    the samples that would have come next, then later epochs start from the beginning.
    The trainer (or ResumableDataLoader) says what was consumed: samples a DataLoader
    prefetched are not consumed.
    """

    def __init__(self, n, seed=0, shuffle=True):
        self.n, self.seed, self.shuffle = int(n), int(seed), bool(shuffle)
        self.epoch = 0
        self.consumed = 0       # samples of this epoch handed to training so far
        self._start = 0         # where the next __iter__ begins

    def __len__(self):
        return self.n     # a whole epoch, also when resumed mid-epoch (Lightning sizes its loop by it)

    def set_epoch(self, epoch):
        """Called at every epoch start (Lightning and DistributedSampler users do)."""
        if int(epoch) != self.epoch:
            self.epoch, self.consumed, self._start = int(epoch), 0, 0

    def order(self, epoch=None):
        torch = _torch()
        epoch = self.epoch if epoch is None else epoch
        if not self.shuffle:
            return list(range(self.n))
        g = torch.Generator()
        g.manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n, generator=g).tolist()

    def __iter__(self):
        start, self._start = self._start, 0
        self.consumed = start
        return iter(self.order()[start:])

    def state_dict(self):
        return {"seed": self.seed, "epoch": self.epoch, "consumed": self.consumed, "n": self.n}

    def load_state_dict(self, state):
        if int(state["n"]) != self.n:
            raise ValueError(f"the checkpoint's sampler covered {state['n']} samples, this one {self.n}")
        self.seed, self.epoch = int(state["seed"]), int(state["epoch"])
        self.consumed = self._start = int(state["consumed"])


def _dataloader_class():
    torch = _torch()

    class ResumableDataLoader(torch.utils.data.DataLoader):
        """A DataLoader over a ResumableSampler whose `state_dict()` is the exact data
        position, so a mid-epoch resume continues with the next batch. Lightning saves
        and restores a loader's state_dict in its checkpoints; BatonCallback tells the
        loader how many batches were trained (Lightning prefetches one batch, so what
        the iterator handed out is one too many). A plain loop calls
        `mark_trained(batches)` before saving.

        Workers ignore the eviction signals. Each epoch's iterator draws its base seed
        from a generator seeded by (seed, epoch), never from the global torch RNG, whose
        state is part of the checkpoint and must not move when an iterator is created.
        """

        def __init__(self, dataset, batch_size=1, shuffle=True, seed=0, drop_last=False, **kw):
            self.resumable_sampler = ResumableSampler(len(dataset), seed=seed, shuffle=shuffle)
            kw.setdefault("worker_init_fn", worker_init_fn)
            super().__init__(dataset, batch_size=batch_size, sampler=self.resumable_sampler,
                             drop_last=drop_last, generator=torch.Generator(), **kw)

        def __iter__(self):
            s = self.resumable_sampler
            self.generator.manual_seed(s.seed * 1_000_003 + s.epoch)
            for batch in super().__iter__():
                s.consumed = min(s.consumed + self.batch_size, s.n)
                yield batch

        def mark_trained(self, batches):
            """`batches` batches of the current epoch are trained: that is the position."""
            self.resumable_sampler.consumed = min(int(batches) * self.batch_size, self.resumable_sampler.n)

        def state_dict(self):
            return {"sampler": self.resumable_sampler.state_dict()}

        def load_state_dict(self, state):
            self.resumable_sampler.load_state_dict(state["sampler"])

    return ResumableDataLoader


def __getattr__(name):
    # PEP 562: the torch- and Lightning-backed classes exist once asked for, so importing
    # this module never imports torch or Lightning.
    if name == "ResumableDataLoader":
        cls = _dataloader_class()
    elif name == "BatonCallback":
        cls = _lightning_callback_class()
    else:
        raise AttributeError(f"module 'baton_ckpt' has no attribute {name!r}")
    globals()[name] = cls
    return cls


# --- a whole training state -----------------------------------------------------------

def save_training_state(model=None, optimizer=None, scheduler=None, scaler=None, epoch=0, step=0,
                        sampler=None, extra=None, name=CHECKPOINT_FILE):
    """Save model, optimizer, LR scheduler, GradScaler, RNG states and the data position
    (epoch, optimizer step within the epoch, sampler state) atomically into the
    checkpoint directory. Call at an optimizer-step boundary, then commit()."""
    # Nothing about the slot goes in (its device, host or time): the file is a pure
    # function of the training state, so an evicted run's final checkpoint is
    # byte-identical to an uninterrupted run's (`baton simulate --verify` compares them).
    state = {"epoch": int(epoch), "step": int(step), "rng": capture_rng()}
    for key, obj in (("model", model), ("optimizer", optimizer), ("scheduler", scheduler),
                     ("scaler", scaler), ("sampler", sampler)):
        if obj is not None:
            state[key] = obj.state_dict()
    if extra is not None:
        state["extra"] = extra
    return save(state, name)


def resume(model=None, optimizer=None, scheduler=None, scaler=None, sampler=None, name=CHECKPOINT_FILE,
           map_location=None):
    """Load what save_training_state() wrote, if anything, onto this slot's device.

    Returns a dict with ``epoch``, ``step`` (0, 0 on a fresh start), ``resumed`` and
    ``extra``. Call it after model.to(device) and after building the optimizer (its
    state then lands next to the parameters). The RNG states are restored last, so
    call it right before the training loop.
    """
    ckpt = load(name, map_location=map_location)
    if ckpt is None:
        return {"epoch": 0, "step": 0, "resumed": False, "extra": None}
    for key, obj in (("model", model), ("optimizer", optimizer), ("scheduler", scheduler),
                     ("scaler", scaler), ("sampler", sampler)):
        if obj is not None and key in ckpt:
            obj.load_state_dict(ckpt[key])
    restore_rng(ckpt["rng"])
    info = restored()
    if info.device_changed:
        _log(f"resuming a checkpoint written on {info.prev_device} on {info.device}")
    return {"epoch": ckpt["epoch"], "step": ckpt["step"], "resumed": True, "extra": ckpt.get("extra")}


def plan_batches(effective_batch, max_micro_batch):
    """(micro_batch, accumulation_steps) that keep the effective batch size when a slot
    can hold at most `max_micro_batch` samples per forward pass: the largest divisor of
    `effective_batch` that fits, times the steps to accumulate. Count optimizer steps,
    not micro-batches, so the resume position does not depend on the slot."""
    effective_batch, max_micro_batch = int(effective_batch), int(max_micro_batch)
    if effective_batch < 1 or max_micro_batch < 1:
        raise ValueError("batch sizes must be positive")
    micro = max(d for d in range(1, min(effective_batch, max_micro_batch) + 1) if effective_batch % d == 0)
    return micro, effective_batch // micro


# --- Lightning ------------------------------------------------------------------------

def _lightning():
    try:
        import lightning.pytorch as pl
    except ImportError:
        import pytorch_lightning as pl
    return pl


def lightning_plugins():
    """Plugins for `Trainer(plugins=...)` that keep Lightning's SLURM handling away from
    baton's signals: a plain LightningEnvironment, even when SLURM_* variables leak into
    the job (no auto-requeue on SIGUSR1, no `scontrol requeue`). BatonCallback also puts
    baton_ckpt's SIGTERM handler back on top of Lightning's at fit start."""
    pl = _lightning()
    import importlib
    envs = importlib.import_module(_lightning().__name__ + ".plugins.environments")
    return [envs.LightningEnvironment()]


def _lightning_callback_class():
    pl = _lightning()

    class BatonCallback(pl.Callback):
        """Lightning 2.x callback: checkpoints go through Lightning's own
        `trainer.save_checkpoint` into the checkpoint directory, then commit.

        - at the end of every training epoch, and every `every_n_steps` optimizer steps
          when given;
        - on an eviction signal: at the next step boundary, then the process exits with
          `exit_code` (143);
        - resume: `trainer.fit(model, dm, ckpt_path=BatonCallback.ckpt_path())`, or let
          `fit(...)` be called without ckpt_path: the callback then restores the
          checkpoint itself at fit start.
        RNG states ride along in the Lightning checkpoint and are put back right before
        the first training batch after a resume. For a mid-epoch resume the train
        DataLoader must be resumable (baton_ckpt.ResumableDataLoader): Lightning saves
        and restores a loader's state_dict.
        """

        FILE = "last.ckpt"

        def __init__(self, every_n_steps=None, exit_code=143, commit_meta=None):
            super().__init__()
            install_signal_handlers()
            self.every_n_steps = every_n_steps
            self.exit_code = exit_code
            self.commit_meta = dict(commit_meta or {})
            self._pending_rng = None

        @classmethod
        def ckpt_path(cls):
            """The checkpoint to resume from, or None on a fresh start."""
            path = os.path.join(checkpoint_dir(), cls.FILE)
            return path if os.path.exists(path) else None

        def state_key(self):
            return "BatonCallback"

        # Lightning installs its own SIGTERM handler in Trainer.fit: it records the
        # signal, kills the launcher's children, and raises SIGTERMException at the next
        # batch, which ends the process before anything is saved. on_train_start puts
        # ours back on top; Lightning restores the original handlers at teardown.
        def setup(self, trainer, pl_module, stage):
            if stage == "fit" and trainer.ckpt_path is None and self.ckpt_path() is not None:
                # fit() called without ckpt_path: resume anyway.
                trainer.ckpt_path = self.ckpt_path()

        def on_train_start(self, trainer, pl_module):
            # Lightning registers its handlers after on_fit_start, right before training.
            _reinstall_handlers()

        def on_save_checkpoint(self, trainer, pl_module, checkpoint):
            checkpoint["baton_rng"] = capture_rng()

        def on_load_checkpoint(self, trainer, pl_module, checkpoint):
            # Before Lightning hands the optimizer states on (see _intern_strings).
            _intern_strings(checkpoint)
            self._pending_rng = checkpoint.get("baton_rng")

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if self._pending_rng is not None:
                restore_rng(self._pending_rng)
                self._pending_rng = None

        def _save_and_commit(self, trainer, why, epoch, step):
            # Every rank saves (Lightning's strategy writes the file on rank 0 only, or
            # shards under FSDP/DeepSpeed); rank 0 commits once all ranks have saved.
            trainer.save_checkpoint(os.path.join(checkpoint_dir(), self.FILE))
            trainer.strategy.barrier("baton_save")
            if trainer.is_global_zero:
                seq = commit(epoch=epoch, step=step, reason=why, global_step=trainer.global_step,
                             **self.commit_meta)
                _log(f"committed epoch {epoch} step {step} seq {seq}")
            trainer.strategy.barrier("baton_commit")

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            epoch, step = trainer.current_epoch, batch_idx + 1
            loaders = trainer.train_dataloader
            for dl in getattr(loaders, "flattened", None) or [loaders]:
                if hasattr(dl, "mark_trained"):
                    dl.mark_trained(step)
            # Under DDP the ranks may see the signal at different steps: agree first.
            if trainer.strategy.reduce_boolean_decision(eviction_requested(), all=False):
                self._save_and_commit(trainer, "eviction", epoch, step)
                _log(f"saved at epoch {epoch} step {step} on eviction signal")
                raise SystemExit(self.exit_code)
            if self.every_n_steps and trainer.global_step % self.every_n_steps == 0:
                self._save_and_commit(trainer, "steps", epoch, step)

        def on_train_epoch_end(self, trainer, pl_module):
            if trainer.current_epoch + 1 < trainer.max_epochs:
                self._save_and_commit(trainer, "epoch", trainer.current_epoch + 1, 0)
            else:
                # The last epoch: leave the final state for baton to capture at exit 0.
                trainer.save_checkpoint(os.path.join(checkpoint_dir(), self.FILE))

    return BatonCallback
