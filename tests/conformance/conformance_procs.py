"""Processors of the conformance suite, each in a sync and an async form (the asyncio backend runs the
async one). They travel by value to worker processes (the conftest registers this module with
cloudpickle), and talk to the test through files in a directory they are given: a worker on another
process can write there, and its clock is this machine's (``time.time()``).
"""

from __future__ import annotations

import asyncio
import os
import threading
import time

from procengine_nb import ProcessingCancelledException


class Fatal(BaseException):
    """A BaseException of the user's own, neither Exception nor an interrupt."""


def _note(directory: str, name: str, text: str = "") -> None:
    path = os.path.join(directory, name)
    with open(path + ".tmp", "w") as file:
        file.write(text)
    os.replace(path + ".tmp", path)  # the reader never sees a half-written file


# -- accounting: successes, errors and cancels ---------------------------------------------------
def mixed(symbol):
    """``symbol % 5``: 1 raises ValueError, 2 raises ProcessingCancelledException (a CANCELLED result),
    anything else returns ``2 * symbol``."""
    if symbol % 5 == 1:
        raise ValueError(f"bad {symbol}")
    if symbol % 5 == 2:
        raise ProcessingCancelledException(f"gave up on {symbol}")
    return 2 * symbol


async def mixed_async(symbol):
    await asyncio.sleep(0)
    return mixed(symbol)


def slow_double(symbol):
    time.sleep(0.01)
    return 2 * symbol


async def slow_double_async(symbol):
    await asyncio.sleep(0.01)
    return 2 * symbol


# -- Stop: a cooperative processor notes when it started and when its token turned cancelled -------
def wait_for_stop(symbol, directory, cancellation_token):
    _note(directory, f"{symbol}.started")
    cancellation_token.wait(60)
    _note(directory, f"{symbol}.seen", repr(time.time()))
    cancellation_token.throw_if_cancelled()
    return symbol


async def wait_for_stop_async(symbol, directory, cancellation_token):
    _note(directory, f"{symbol}.started")
    try:
        while not cancellation_token.is_cancelled:
            await asyncio.sleep(0.002)
    except asyncio.CancelledError:  # the asyncio backend cancels the coroutine itself
        _note(directory, f"{symbol}.seen", repr(time.time()))
        raise
    _note(directory, f"{symbol}.seen", repr(time.time()))
    cancellation_token.throw_if_cancelled()
    return symbol


# -- timeout=: symbols 0 and 1 are slow, the others quick -------------------------------------------
SLOW_SECONDS = 2.5
QUICK_SECONDS = 0.05


def slow_first(symbol, cancellation_token):
    if symbol < 2:
        cancellation_token.wait(SLOW_SECONDS)  # (ends early once the batch is over: no straggler)
        return symbol
    time.sleep(QUICK_SECONDS)
    return symbol


async def slow_first_async(symbol, cancellation_token):
    await asyncio.sleep(SLOW_SECONDS if symbol < 2 else QUICK_SECONDS)
    return symbol


# -- faults ----------------------------------------------------------------------------------------
RAISES = {"keyboard": KeyboardInterrupt, "exit": SystemExit, "fatal": Fatal, "generator": GeneratorExit}


def faults(symbol):
    """Raises the BaseException named by the symbol; ``"lock"`` returns a value that cannot be pickled;
    ``"lock-error"`` raises an exception that holds one; anything else is upper-cased."""
    kind = RAISES.get(symbol)
    if kind is not None:
        raise kind(f"raised for {symbol}")
    if symbol == "lock":
        return threading.Lock()
    if symbol == "lock-error":
        raise ValueError(threading.Lock())
    return symbol.upper()


async def faults_async(symbol):
    await asyncio.sleep(0)
    return faults(symbol)


# -- closing mid-batch -------------------------------------------------------------------------------
def note_and_sleep(symbol, directory):
    _note(directory, f"{symbol}.started")
    time.sleep(0.05)
    return symbol


async def note_and_sleep_async(symbol, directory):
    _note(directory, f"{symbol}.started")
    await asyncio.sleep(0.05)
    return symbol
