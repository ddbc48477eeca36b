"""Ctrl-C reaches the main thread, whichever of the process's threads the kernel hands it to."""

from __future__ import annotations

import os
import signal
import threading
import time
from contextlib import contextmanager
from typing import Iterator

# A SIGINT this soon after the first is the relay's own copy (or the same keypress): not a second.
_REPEAT_WINDOW_S = 1.0
# How long the main thread gets to see an interrupt by itself before it is sent on to it.
_GRACE_S = 0.3


@contextmanager
def interrupts_reach_main_thread() -> Iterator[None]:
    """While inside, a SIGINT that lands on another thread is sent on to the main thread.

    Python runs signal handlers in the main thread, and only when it runs bytecode: a main thread
    blocked in a lock (joining Flower's workers, say) sleeps through a SIGINT the kernel gave to
    one of the threads Flower, Ray or torch started, and the run goes on. Python's C-level handler
    writes each signal's number to the wakeup fd on whatever thread it runs; a relay thread reads
    it and, if the main thread has not raised KeyboardInterrupt within a moment, sends SIGINT to
    the main thread itself, which interrupts its wait.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    if previous_fd != -1:  # someone else reads the wakeup fd already: leave it to them
        signal.set_wakeup_fd(previous_fd)
        os.close(read_fd)
        os.close(write_fd)
        yield
        return
    first_seen: list[float] = []
    previous_handler = signal.getsignal(signal.SIGINT)

    def on_interrupt(signum: int, frame: object) -> None:
        now = time.monotonic()
        if first_seen and now - first_seen[0] < _REPEAT_WINDOW_S:
            return
        first_seen[:] = [now]
        raise KeyboardInterrupt

    def relay(main_thread_id: int) -> None:
        relayed = False
        while data := os.read(read_fd, 64):
            if signal.SIGINT in data and not relayed:
                time.sleep(_GRACE_S)
                if not first_seen:
                    signal.pthread_kill(main_thread_id, signal.SIGINT)
                    relayed = True

    signal.signal(signal.SIGINT, on_interrupt)
    relay_thread = threading.Thread(target=relay, args=(threading.get_ident(),), name="flip-sigint-relay", daemon=True)
    relay_thread.start()
    try:
        yield
    finally:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGINT, previous_handler)
        os.close(write_fd)  # ends the relay's read
        relay_thread.join(timeout=1)
        os.close(read_fd)
