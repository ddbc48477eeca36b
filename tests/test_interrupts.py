"""A Ctrl-C that the kernel hands to some other thread still interrupts a blocked main thread."""

import signal
import threading
import time

import pytest

from flip.interrupts import interrupts_reach_main_thread


def interrupt_from_another_thread(delay: float = 0.2) -> None:
    def send_to_itself():
        time.sleep(delay)
        signal.pthread_kill(threading.get_ident(), signal.SIGINT)  # the C handler runs on this thread

    threading.Thread(target=send_to_itself, daemon=True).start()


def test_a_blocked_main_thread_is_interrupted_at_once():
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        with interrupts_reach_main_thread():
            interrupt_from_another_thread()
            threading.Event().wait(timeout=8)  # a lock wait: only a signal to this thread ends it early
    assert time.monotonic() - started < 4


def test_without_the_relay_the_blocked_main_thread_sleeps_through_it():
    """What the relay is for: the same interrupt is only seen once the wait is over."""
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        interrupt_from_another_thread()
        threading.Event().wait(timeout=2)
        for _ in range(1000):  # bytecode again: Python runs the handler now
            pass
    assert time.monotonic() - started >= 1.9


def test_the_previous_handler_is_back_afterwards():
    before = signal.getsignal(signal.SIGINT)
    with interrupts_reach_main_thread():
        assert signal.getsignal(signal.SIGINT) is not before
    assert signal.getsignal(signal.SIGINT) is before
    assert signal.set_wakeup_fd(-1) == -1  # and no wakeup fd left behind
