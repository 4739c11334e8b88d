"""Stopping a run cleanly on SIGINT (Ctrl-C) or SIGTERM (preemption, SLURM, Colab): the
first signal asks the loop to finish the compiled call in flight, save a checkpoint at that
step and raise ``errors.Interrupted``; a second one raises it at once, keeping the last
checkpoint. The loop checks after every compiled call, so a stop waits at most one chunk
(``--steps_per_call`` steps, or up to the next epoch or checkpoint boundary)."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

from absl import logging

from ladder_jax.errors import Interrupted

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_requested: list[int] = []  # the signals received while handlers are installed
_depth = [0]  # nesting of handling() (a sweep's runner around the loop's)


def _handle(signum: int, frame) -> None:
    del frame
    _requested.append(signum)
    if len(_requested) > 1:
        raise Interrupted(signum, immediate=True)
    logging.warning("%s received: stopping after the current compiled call with a "
                    "checkpoint (a second signal stops at once)", signal.Signals(signum).name)


@contextlib.contextmanager
def handling() -> Iterator[None]:
    """Within it, SIGINT and SIGTERM are stop requests (see the module docstring). Nests;
    outside the main thread (where Python cannot install handlers) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    if _depth[0] == 0:
        _requested.clear()
        previous = {s: signal.signal(s, _handle) for s in SIGNALS}
    _depth[0] += 1
    try:
        yield
    finally:
        _depth[0] -= 1
        for s, handler in previous.items():
            signal.signal(s, handler)


def requested() -> int | None:
    """The first signal received (a stop request), or None."""
    return _requested[0] if _requested else None


def raise_if_requested(step: int | None = None, saved: bool = False) -> None:
    """Raises Interrupted for a pending stop request (``step``: where the run stopped,
    ``saved``: whether a checkpoint at that step was written)."""
    if _requested:
        raise Interrupted(_requested[0], step=step, saved=saved)
