"""Adam for the bf16 first layers in one pass: bf16 gradient in, fp32 update, bf16 copy out.

With ``precision="bf16"`` the stacked first-layer weights are most of the search's memory traffic.
Updating them with torch's fused Adam needs three passes over every weight per step: the bf16
weight gradient copied into an fp32 ``.grad``, Adam itself, then the fp32 masters cast to the bf16
working copy the next matmuls read. :class:`CastingAdam` does all three in one compiled
elementwise kernel (torch.compile / inductor): it reads the bf16 gradient, updates the fp32 master
weight and the fp32 moments with torch's Adam arithmetic (L2 weight decay, bias correction,
``eps`` after the square root, all in fp32) and writes the refreshed bf16 copy. That is the same
bytes per parameter as a fused Adam step over fp32 gradients (the floor bench_fusion prices).

Where torch.compile cannot build the kernel (no C++ compiler, unsupported platform) the same
arithmetic runs eagerly in torch ops: slower, same results up to float rounding order.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

Kernel = Callable[..., None]


def adam_cast_update(
    param: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    low: torch.Tensor,
    scalars: torch.Tensor,
    beta1: float,
    beta2: float,
    weight_decay: float,
    eps: float,
) -> None:
    """One Adam step of ``param`` from the low-precision ``grad``, then ``low <- param``.

    ``scalars`` holds the step-dependent ``[lr / bias_correction1, 1 / sqrt(bias_correction2)]``
    as an fp32 tensor, so the step count never triggers a recompile; the fixed hyper-parameters
    are plain floats, compiled in as constants (a few % faster than reading them from a tensor).
    Mirrors ``torch._fused_adam_`` (non-amsgrad, not maximising), except that the bias
    correction of the second moment is a multiplication by its reciprocal: one division less
    per element, 10 % faster at 1 thread (the kernel is bound by its divisions as much as by
    memory), a rounding difference of an ulp.
    """
    step_size, inv_bc2_sqrt = scalars[0], scalars[1]
    g = grad.float() + weight_decay * param
    m = exp_avg + (g - exp_avg) * (1 - beta1)
    v = exp_avg_sq * beta2 + (1 - beta2) * g * g
    p = param - step_size * m / (v.sqrt() * inv_bc2_sqrt + eps)
    # Written back only at the end, so inductor emits one loop that reads and writes each
    # tensor once (in-place updates in between made it re-read them: ~15 % slower).
    exp_avg.copy_(m)
    exp_avg_sq.copy_(v)
    param.copy_(p)
    low.copy_(p)


_COMPILED: list[Kernel] = []
#: Inductor options of the kernel (see :func:`_compiled_kernel`).
_COMPILE_OPTIONS: dict[str, str | int | bool | Callable[..., object]] = {"cpp_wrapper": True}
#: Compiling is not safe from two threads at once (stacks may train side by side).
_COMPILE_LOCK = threading.Lock()


def compiled_kernel() -> Kernel | None:
    """The compiled :func:`adam_cast_update` (built and checked once per process), or None."""
    with _COMPILE_LOCK:
        return _compiled_kernel()


def _compiled_kernel() -> Kernel | None:
    if _COMPILED:
        return _COMPILED[0]
    import torch

    try:
        # Static shapes: ~15 % faster than a dynamic-length kernel; each stack is one flat buffer,
        # so a search compiles one kernel per stack shape (about a second each).
        # cpp_wrapper: the kernel runs with the GIL released (inductor's default Python binding
        # holds it for the whole kernel, ~25 ms at d=256, which stalls a stack training beside
        # this one in another thread: measured as 30 ms gaps in a Python loop, 5 ms with it).
        kernel = torch.compile(
            adam_cast_update, dynamic=False, fullgraph=True, options=_COMPILE_OPTIONS
        )
        _self_check(kernel)
    except Exception as error:
        # Any failure to build (no C++ compiler, unsupported platform) means the eager path:
        # same arithmetic, slower, so say so rather than fail the search.
        logging.getLogger(__name__).warning("compiled Adam unavailable, eager fallback: %s", error)
        return None
    _COMPILED.append(kernel)
    return kernel


def _self_check(kernel: Kernel) -> None:
    """Run the kernel once on a small tensor and compare it with the eager arithmetic."""
    import torch

    generator = torch.Generator().manual_seed(0)
    tensors = [torch.rand(257, generator=generator) for _ in range(4)]
    scalars = torch.tensor([1e-3, 0.5])
    outs = []
    for fn in (kernel, adam_cast_update):
        p, g, m, v = (t.clone() for t in tensors)
        low = torch.empty_like(p, dtype=torch.bfloat16)
        fn(p, g.to(torch.bfloat16), m, v.abs(), low, scalars, 0.9, 0.999, 1e-5, 1e-8)
        outs.append((p, m, v, low))
    for a, b in zip(*outs, strict=True):
        if not torch.allclose(a.float(), b.float(), rtol=1e-5, atol=1e-7):
            raise RuntimeError("compiled Adam kernel disagrees with the eager arithmetic")


class CastingAdam:
    """Adam over fp32 master weights fed bf16 gradients, refreshing their bf16 copies.

    The given fp32 weights are copied into one flat master buffer; :attr:`params`,
    :attr:`grads` (where the trainer writes the bf16 weight gradients) and :attr:`lows` (the bf16
    copies it computes with) are views of flat buffers shaped like the inputs, so one kernel call
    per step updates them all.
    """

    def __init__(
        self,
        weights: Sequence[torch.Tensor],
        low_dtype: torch.dtype,
        lr: float,
        weight_decay: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        import torch

        self.master = torch.cat([w.detach().reshape(-1) for w in weights])
        self.low = self.master.to(low_dtype)
        self.grad = torch.zeros_like(self.low)
        self.exp_avg = torch.zeros_like(self.master)
        self.exp_avg_sq = torch.zeros_like(self.master)
        shapes = [tuple(w.shape) for w in weights]
        self.params = _views(self.master, shapes)
        self.grads = _views(self.grad, shapes)
        self.lows = _views(self.low, shapes)
        self.lr, self.weight_decay, self.betas, self.eps = lr, weight_decay, betas, eps
        self.steps = 0
        compiled = compiled_kernel()
        self.compiled = compiled is not None
        self.kernel: Kernel = compiled if compiled is not None else adam_cast_update

    def _scalars(self) -> torch.Tensor:
        import torch

        beta1, beta2 = self.betas
        step_size = self.lr / (1 - beta1**self.steps)
        inv_bc2_sqrt = 1.0 / math.sqrt(1 - beta2**self.steps)
        values = [step_size, inv_bc2_sqrt]
        return torch.tensor(values, dtype=torch.float32, device=self.master.device)

    def step(self) -> None:
        self.steps += 1
        tensors = (self.master, self.grad, self.exp_avg, self.exp_avg_sq, self.low)
        constants = (*self.betas, self.weight_decay, self.eps)
        if self.steps > 1 or not self.compiled:
            self.kernel(*tensors, self._scalars(), *constants)
            return
        import torch._dynamo

        # The first call compiles this buffer's length; a long search (or a test session) meets
        # more lengths than dynamo's default of 8 per function, after which it would go eager.
        with _COMPILE_LOCK, torch._dynamo.config.patch(recompile_limit=_RECOMPILE_LIMIT):
            self.kernel(*tensors, self._scalars(), *constants)


#: Kernel lengths compiled per process before dynamo falls back to eager (same results, slower).
_RECOMPILE_LIMIT = 256


def _views(flat: torch.Tensor, shapes: Sequence[tuple[int, ...]]) -> list[torch.Tensor]:
    views, start = [], 0
    for shape in shapes:
        size = math.prod(shape)
        views.append(flat[start : start + size].view(shape))
        start += size
    return views
