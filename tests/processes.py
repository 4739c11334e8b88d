"""Helpers of the tests that stop a training process from outside (SIGKILL, SIGINT,
SIGTERM) and look at what it left in its workdir."""

from __future__ import annotations

import os
import subprocess
import time

from ladder_jax.train import workdir

TIMEOUT_S = 300


def checkpoint_steps(work: str) -> list[int]:
    """The steps of the checkpoints in ``work``, oldest first."""
    path = os.path.join(work, workdir.CHECKPOINT_DIR)
    if not os.path.isdir(path):
        return []
    return sorted(int(name) for name in os.listdir(path) if name.isdigit())


def signal_after_checkpoint(proc: subprocess.Popen, work: str, after_step: int,
                            signals: list[int]) -> None:
    """Sends ``signals`` to ``proc`` once a checkpoint at ``after_step`` or later exists in
    ``work``; fails the test if the run ends first."""
    deadline = time.time() + TIMEOUT_S
    while time.time() < deadline and proc.poll() is None:
        if any(s >= after_step for s in checkpoint_steps(work)):
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be stopped"
    for signum in signals:
        proc.send_signal(signum)
