"""The parts of baton_ckpt the end-to-end torch tests do not reach: gradient accumulation
planning, GradScaler state through save/resume, and DataLoader workers that survive the
eviction signal baton forwards to the whole process group. Run by tests/torch.rs
(`python -m unittest discover -s python/tests`), with torch from make test's .venv."""

import os
import signal
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import baton_ckpt as bc  # noqa: E402


class PlanBatches(unittest.TestCase):
    def test_keeps_the_effective_batch(self):
        for effective, cap in [(256, 48), (256, 256), (256, 1000), (7, 3), (96, 40), (1, 1)]:
            micro, steps = bc.plan_batches(effective, cap)
            self.assertEqual(micro * steps, effective, (effective, cap))
            self.assertLessEqual(micro, cap)
        self.assertEqual(bc.plan_batches(256, 48), (32, 8))
        self.assertEqual(bc.plan_batches(7, 3), (1, 7))

    def test_refuses_nonsense(self):
        for bad in [(0, 4), (4, 0), (-1, 2)]:
            with self.assertRaises(ValueError):
                bc.plan_batches(*bad)


class ScalerThroughSaveAndResume(unittest.TestCase):
    def test_grad_scaler_state_comes_back(self):
        import torch

        try:
            make = lambda: torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=1)
            make()
        except (AttributeError, TypeError, RuntimeError) as e:
            self.skipTest(f"no CPU GradScaler in this torch: {e}")
        with tempfile.TemporaryDirectory() as d:
            os.environ["BATON_CHECKPOINT_DIR"] = d
            try:
                model = torch.nn.Linear(3, 1)
                opt = torch.optim.SGD(model.parameters(), lr=0.1)
                scaler = make()
                loss = model(torch.ones(2, 3)).sum()
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()  # a finite step with growth_interval=1 doubles the scale
                self.assertEqual(scaler.get_scale(), 2048.0)
                bc.save_training_state(model=model, optimizer=opt, scaler=scaler, epoch=1, step=5)
                fresh = make()
                self.assertEqual(fresh.get_scale(), 1024.0)
                pos = bc.resume(model=torch.nn.Linear(3, 1), optimizer=None, scaler=fresh)
                self.assertTrue(pos["resumed"])
                self.assertEqual((pos["epoch"], pos["step"]), (1, 5))
                self.assertEqual(fresh.get_scale(), 2048.0, "the GradScaler's scale was not restored")
            finally:
                del os.environ["BATON_CHECKPOINT_DIR"]


class Pids(object):
    """A dataset whose items say which process produced them, slowly enough that the
    workers are alive when the signal comes."""

    def __len__(self):
        return 64

    def __getitem__(self, i):
        time.sleep(0.01)
        return i, os.getpid()


class WorkersIgnoreTheEvictionSignal(unittest.TestCase):
    def run_loader(self, init):
        import torch

        loader = torch.utils.data.DataLoader(Pids(), batch_size=4, num_workers=2, worker_init_fn=init)
        seen, signalled = [], False
        for idx, pids in loader:
            seen.extend(int(i) for i in idx)
            if not signalled:
                # What baton does on eviction: SIGTERM to every process of the group. Here
                # only the workers get it; the main process decides.
                for pid in set(int(p) for p in pids):
                    if pid != os.getpid():
                        os.kill(pid, signal.SIGTERM)
                signalled = True
                time.sleep(0.3)
        return seen

    def test_with_the_helper_every_batch_still_arrives(self):
        self.assertEqual(sorted(self.run_loader(bc.worker_init_fn)), list(range(64)))

    def test_without_it_a_worker_dies(self):
        # The check above can fail: a worker left with the default handler dies of the
        # signal, and PyTorch raises in the main process.
        with self.assertRaises(RuntimeError):
            self.run_loader(None)


if __name__ == "__main__":
    unittest.main()
