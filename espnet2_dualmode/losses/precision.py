"""Loss math in float32 under mixed precision.

ESPnet's ``--use_amp true`` runs the whole forward pass (training and validation) under
``torch.autocast``. Autocast runs matmul-like ops in float16/bfloat16 whatever their
inputs' dtype, so a ``.float()`` before such an op is undone; sums of many products
(the sp-KD Gram matrices, RNN-T normalisers) then overflow float16 or lose bfloat16's
8 mantissa bits. :func:`float32_outside_autocast` runs a loss with autocast disabled
and its low-precision inputs in float32.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable, TypeVar

import torch

F = TypeVar("F", bound=Callable[..., Any])


def _at_least_float32(value: Any) -> Any:
    """A float16/bfloat16 tensor in float32; anything else (float64, ints, modules) as is."""
    if isinstance(value, torch.Tensor) and value.is_floating_point() and value.element_size() < 4:
        return value.float()
    return value


def float32_outside_autocast(fn: F) -> F:
    """Decorate ``fn`` to run with autocast disabled and its tensor arguments in >= float32.

    Autocast is disabled for the device types of ``fn``'s tensor arguments (autocast state
    is per device type). Float16/bfloat16 tensors passed directly as arguments are cast to
    float32 (differentiably, so gradients flow back in their own dtype); float64, integer
    and bool tensors, modules and other values are passed unchanged. Modules called inside
    ``fn`` then run in their parameters' dtype.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        args = tuple(_at_least_float32(a) for a in args)
        kwargs = {k: _at_least_float32(v) for k, v in kwargs.items()}
        device_types = {
            v.device.type for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor)
        }
        with contextlib.ExitStack() as stack:
            for device_type in sorted(device_types):
                stack.enter_context(torch.autocast(device_type=device_type, enabled=False))
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
