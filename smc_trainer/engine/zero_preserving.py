"""Which optimizer steps keep pruned weights at exactly zero by themselves.

After `MaskSet.apply_to_grads`, a pruned weight enters the optimizer step with value 0, gradient
0 (masked before clipping; clipping scales 0 to 0) and every per-element state at its position 0
(zeroed by `MaskSet.set_masks` when the mask changed, DESIGN invariant 2). For the update rules
below, the step then leaves the weight at exactly 0, so re-masking the weights after the step
(`MaskSet.apply_to_weights`, a full pass over the prunable weights) changes no bit and can be
skipped:

* `torch.optim.SGD`, any momentum, dampening, nesterov, coupled weight decay, maximize:
  d = g + wd * w = 0; buf = mu * buf + (1 - dampening) * d = 0 (the first step clones d = 0);
  w -= lr * (d + mu * buf if nesterov else buf), i.e. w -= 0.
* `torch.optim.Adam` (coupled weight decay, or decoupled) and `torch.optim.AdamW`, amsgrad or
  not, foreach or fused: w *= 1 - lr * wd keeps 0; m = b1 m + (1 - b1) g = 0;
  v = b2 v + (1 - b2) g^2 = 0 (amsgrad: max(v_max, v) = 0); w -= lr * m_hat / (sqrt(v_hat) + eps)
  = lr * 0 / eps = 0, *provided eps > 0*: eps = 0 gives 0 / 0 = NaN, so it is not skipped.

A zero that went through these steps may come out as -0.0, and re-masking would have kept that
sign (-0.0 * 0 = -0.0), so the weights are bit-identical either way. NaN or inf gradients break
every rule above, but re-masking could not repair them either (NaN * 0 = NaN): under fp16 the grad
scaler skips such steps. Any other optimizer class (Adafactor, 8-bit or quantized states, LAMB,
subclasses whose step may differ) is re-masked after every step.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

ZERO_PRESERVING = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW)
_NEEDS_EPS = (torch.optim.Adam, torch.optim.AdamW)


def unwrap_optimizer(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The torch optimizer inside wrappers such as accelerate's `AcceleratedOptimizer` (its `.optimizer`)."""
    inner = getattr(optimizer, "optimizer", None)
    while inner is not None and inner is not optimizer:
        optimizer, inner = inner, getattr(inner, "optimizer", None)
    return optimizer


def why_not_zero_preserving(optimizer: torch.optim.Optimizer | None, params: Iterable[torch.Tensor]) -> str | None:
    """None when a step of `optimizer` keeps every zero-state, zero-gradient zero of `params` at zero;
    otherwise the reason it may not."""
    if optimizer is None:
        return "no optimizer"
    inner = unwrap_optimizer(optimizer)
    if type(inner) not in ZERO_PRESERVING:  # exact classes: a subclass may change the update
        return f"{type(inner).__name__} is not one of {', '.join(c.__name__ for c in ZERO_PRESERVING)}"
    if type(inner) in _NEEDS_EPS:
        wanted = {id(p) for p in params}
        for group in inner.param_groups:
            if any(id(p) in wanted for p in group["params"]) and not float(group["eps"]) > 0.0:
                return f"{type(inner).__name__} with eps={group['eps']} (0 / 0 at pruned weights)"
    return None
