"""Encoding jobs that tiktoken runs: GPT-2's BPE, and a learned BPE's tiktoken twin (bpe_pipeline.tiktoken_twin).

A job is a list of texts, None standing for <|endoftext|> between documents (encode.Encoder makes them). On a
large corpus the jobs go to worker processes, not threads: tiktoken's threads in one process share its regex's
caches and slow each other down, while processes keep every core busy (BENCHMARKS.md, "prepare on JSON Lines").
Which runs a job never changes its ids.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np

from ..bpe_pipeline import has_long_run, twin_ids
from ..errors import UserError
from ..tokenizers import END_OF_TEXT

PROCESS_BYTES = 32 << 20  # text to encode from which worker processes pay for their start (~0.5 s)


def tiktoken_ids(enc: Any, batch: list[str | None], eot: int, learned: bool) -> np.ndarray:
    """The ids (uint32) of a job's texts one after another, `eot` where an entry is None; `learned`: `enc` is a
    learned BPE's twin, whose long runs are cut as its Split cuts them (bpe_pipeline.twin_ids)."""
    ids = _one_call(enc, batch, eot, learned)
    if ids is not None:
        return ids
    separator = np.array([eot], dtype=np.uint32)
    arrays = []
    for text in batch:
        if text is None:
            arrays.append(separator)
        elif learned:
            arrays.append(twin_ids(enc, text))
        else:
            arrays.append(enc.encode_to_numpy(text, disallowed_special=()))  # == encode_ordinary, no list
    return np.concatenate(arrays).astype(np.uint32, copy=False) if arrays else np.zeros(0, dtype=np.uint32)


def _one_call(enc: Any, batch: list[str | None], eot: int, learned: bool) -> np.ndarray | None:
    """A job's ids from one tiktoken call, or None where that would not give them: its documents joined by the
    text <|endoftext|>, which tiktoken, allowed that special token, encodes as its id and never merges with the
    text either side (the string cannot overlap itself), so each document encodes on its own, as encode_ordinary
    would. One call releases the GIL once a job, not once a document. None when a document holds that text
    itself (it is text there, not the token), when the separator is not that id, or for a learned BPE's long
    runs."""
    if END_OF_TEXT not in enc.special_tokens_set or enc.encode_single_token(END_OF_TEXT) != eot:
        return None
    texts: list[str] = []
    for text in batch:
        if text is None:
            texts.append(END_OF_TEXT)
        elif END_OF_TEXT in text:
            return None
        else:
            texts.append(text)
    joined = "".join(texts)
    if learned and has_long_run(joined):
        return None
    return enc.encode_to_numpy(joined, allowed_special={END_OF_TEXT}).astype(np.uint32, copy=False)


def worker_died() -> UserError:
    """What prepare says when one of its worker processes was killed (the pool is broken: nothing is written)."""
    return UserError("a worker process of prepare was killed (by a signal, or for memory): nothing was written; "
                     "run prepare again (NANOGPT_PREPARE_PROCESSES=0 works on threads)")


def use_processes(nbytes: int, workers: int) -> bool:
    """Encode in worker processes: more than one worker and at least PROCESS_BYTES of text, or as
    NANOGPT_PREPARE_PROCESSES says (1: always, 0: never; the tests run both ways)."""
    fixed = os.environ.get("NANOGPT_PREPARE_PROCESSES", "").strip()
    if fixed in ("0", "1"):
        return fixed == "1"
    return workers > 1 and nbytes >= PROCESS_BYTES


_worker: tuple[Any, int, bool, np.dtype] | None = None  # in a worker process: its encoding, eot, learned, dtype


def _start(enc: Any, eot: int, learned: bool, dtype: np.dtype) -> None:
    global _worker
    start_worker()
    _worker = (enc, eot, learned, dtype)


def start_worker() -> None:
    """What every worker process of prepare does first."""
    # Ctrl-C reaches the whole process group: the parent stops the workers; SIGTERM kills one without a word
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if hasattr(signal, "pthread_sigmask"):  # started while prepare held them (encode.signals_held): inherited
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})
    parent = multiprocessing.parent_process()
    if parent is not None:  # a parent killed with -9 says nothing to its pool: a worker would wait for jobs forever
        threading.Thread(target=_end_with, args=(parent.sentinel,), daemon=True).start()


def _end_with(sentinel: int) -> None:
    multiprocessing.connection.wait([sentinel])  # readable once the parent has gone, however it went
    os._exit(1)


def _job(batch: list[str | None]) -> np.ndarray:
    assert _worker is not None
    enc, eot, learned, dtype = _worker
    return tiktoken_ids(enc, batch, eot, learned).astype(dtype, copy=False)  # uint16 crosses the pipe


def process_pool(enc: Any, eot: int, learned: bool, dtype: np.dtype, workers: int) -> ProcessPoolExecutor:
    """`workers` processes, each with its own copy of `enc` (a tiktoken Encoding pickles as its ranks)."""
    return start_pool(workers, _start, (enc, eot, learned, dtype))


def start_pool(workers: int, initializer: Any, initargs: tuple = ()) -> ProcessPoolExecutor:
    """A pool of `workers` processes, all started now, by spawn (prepare holds threads already, and forking a
    process with threads can deadlock), with SIGTERM and SIGINT held meanwhile and their stderr on /dev/null:
    prepare says what went wrong in one line, and a worker still starting when prepare stops (its semaphore gone)
    printed a traceback after that line."""
    from .encode import signals_held

    with signals_held(), _stderr_quiet():
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=initializer,
                                   initargs=initargs)
        for _ in range(workers):
            pool.submit(int)  # each submit starts a process while none is idle
    return pool


@contextlib.contextmanager
def _stderr_quiet():
    """File descriptor 2 on /dev/null (what a process started meanwhile inherits), restored on the way out."""
    sys.stderr.flush()
    saved = os.dup(2)
    quiet = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(quiet, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(quiet)


def submit_job(pool: ProcessPoolExecutor, batch: list[str | None]) -> Any:
    return pool.submit(_job, batch)
