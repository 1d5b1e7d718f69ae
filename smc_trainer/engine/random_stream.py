"""Seekable uniform random numbers: score `i` of stream `seed` depends only on `(seed, i)`.

The scores are drawn from Philox4x64-10 (Salmon et al. 2011), a counter-based generator, through
numpy's `Philox` bit generator: score `i` is the top 24 bits of raw output `i` of the stream keyed
by `seed`, divided by 2**24 (a float32 in [0, 1), like `torch.rand`). Jumping to any position costs
O(1), so a slice of a huge stream costs only its own length, and no block is ever regenerated.
The numbers depend on neither the device, the process, the chunk size nor the order of requests
(DESIGN invariant 5). numpy guarantees that the raw bit stream of its bit generators is stable.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from smc_trainer.errors import UsageError

_OUTPUTS_PER_COUNTER = 4  # Philox4x64 turns one counter value into four 64-bit outputs
_BLOCK = 1 << 16  # raw outputs converted at a time (bounds the uint64 temporary to 512 KiB)
_SCALE = 2.0**-24


def uniform_into(seed: int, start: int, out: Tensor) -> Tensor:
    """Write scores `start, ..., start + out.numel() - 1` of stream `seed` into the float32 tensor `out`."""
    if out.dtype != torch.float32:
        raise UsageError(f"uniform_into writes float32 scores; got an output of dtype {out.dtype}")
    if seed < 0 or start < 0:
        raise UsageError(f"seed and start must be non-negative; got seed={seed}, start={start}")
    host = out if out.device.type == "cpu" and out.is_contiguous() else torch.empty(out.numel(), dtype=torch.float32)
    dest = host.numpy().reshape(-1)
    bits = np.random.Philox(key=seed, counter=start // _OUTPUTS_PER_COUNTER)
    if start % _OUTPUTS_PER_COUNTER:
        bits.random_raw(start % _OUTPUTS_PER_COUNTER)
    for a in range(0, dest.size, _BLOCK):
        raw = bits.random_raw(min(_BLOCK, dest.size - a))
        np.right_shift(raw, np.uint64(40), out=raw)
        np.multiply(raw, _SCALE, out=dest[a : a + raw.size], casting="unsafe")  # exact: 24-bit integers
    if host is not out:
        out.copy_(host.view(out.shape))
    return out
