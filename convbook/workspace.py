"""Bounded, thread-local scratch buffers for the fast strategies (book chapter 7).

A fresh large tensor is not free: the operating system hands out its pages lazily, and touching
them for the first time costs about as much as a pass over the data (≈0.3 ms per MB here). The
strategies of :mod:`convbook.strategies` therefore take their *intermediate* tensors (padded
inputs, im2col columns, matmul results before the final layout copy) from here.

Rules that keep this safe:

* one buffer per *slot name*, per dtype and device, per thread (``threading.local``): two threads
  never share a buffer, and a handful of slot names bounds the number of buffers;
* a request above :data:`SLOT_LIMIT_BYTES` gets a fresh tensor that is not kept, so the memory held
  is at most ``slots × SLOT_LIMIT_BYTES`` per thread;
* a buffer is scratch only: its contents are undefined on return, and no strategy returns it or
  a view of it -- every result is a fresh tensor. The one thing a slot may promise about its
  contents is the zero border of a frame (:func:`framed_buffer`), and only while nothing but that
  same frame has been requested from it.
"""
from __future__ import annotations

import math
import threading

import torch

SLOT_LIMIT_BYTES = 64 << 20
"""The largest buffer kept for reuse (64 MiB); larger requests are allocated and dropped."""

_local = threading.local()


def _slots() -> dict:
    if not hasattr(_local, "slots"):
        _local.slots = {}
    return _local.slots


def buffer(name: str, shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An uninitialised tensor of ``shape`` whose memory is reused by the next request for the
    same ``name`` (same dtype and device) on this thread."""
    numel = math.prod(shape)
    key = (name, dtype, torch.device(device))
    _frames().pop(key, None)
    if numel * torch.empty((), dtype=dtype).element_size() > SLOT_LIMIT_BYTES:
        return torch.empty(shape, dtype=dtype, device=device)
    slots = _slots()
    flat = slots.get(key)
    if flat is None or flat.numel() < numel:
        flat = slots[key] = torch.empty(numel, dtype=dtype, device=device)
    return flat[:numel].view(shape)


def framed_buffer(name: str, shape, frame, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, bool]:
    """:func:`buffer`, for a caller that writes zeros around the windows described by ``frame`` (any
    hashable value) and, after that, only inside them; and whether those zeros are still in place:
    True when this slot's previous request on this thread was this same shape and frame (any other
    request of the slot forgets the frame). A padded copy of the same layer's input, call after call,
    then writes only its window."""
    kept = _frames().get((name, dtype, torch.device(device))) == (tuple(shape), frame)
    tensor = buffer(name, shape, dtype, device)
    if tensor.numel() * tensor.element_size() <= SLOT_LIMIT_BYTES:
        _frames()[(name, dtype, torch.device(device))] = (tuple(shape), frame)
    return tensor, kept


def _frames() -> dict:
    if not hasattr(_local, "frames"):
        _local.frames = {}
    return _local.frames


def thread_parts(count: int) -> int:
    """Into how many equal parts ``count`` items (images, frequency rows) are split so that each of
    PyTorch's threads works on its own part: the thread count where it divides ``count``, else 1."""
    threads = torch.get_num_threads()
    return threads if 1 < threads <= count and count % threads == 0 else 1


def image_chunks(batch: int, fit: int):
    """(n0, n1) chunks of a batch, at most ``fit`` images each (one at least), spread evenly: a multiple of
    the thread count where that many fit, so that a product batched over a chunk's images gives each thread
    whole images (an odd chunk left r18_128_28's im2col forward, 3 + 3 + 2 images, 20% slower than chunks of 2)."""
    fit, threads = max(1, fit), torch.get_num_threads()
    if fit >= threads:
        fit -= fit % threads
    chunks = -(-batch // fit)
    step = -(-batch // chunks)
    if fit >= threads:
        step = min(fit, -(-step // threads) * threads)
    for n0 in range(0, batch, step):
        yield n0, min(batch, n0 + step)


def held_bytes() -> int:
    """Bytes this thread's buffers hold now."""
    return sum(t.numel() * t.element_size() for t in _slots().values())


def clear() -> None:
    """Drop this thread's buffers (the next requests allocate afresh)."""
    _slots().clear()
    _frames().clear()
