"""Adam for the bf16 first layers in one pass: bf16 gradient in, fp32 update, bf16 copy out.

With ``precision="bf16"`` the stacked first-layer weights are most of the search's memory traffic.
Updating them with torch's fused Adam needs three passes over every weight per step: the bf16
weight gradient copied into an fp32 ``.grad``, Adam itself, then the fp32 masters cast to the bf16
working copy the next matmuls read. :class:`CastingAdam` does all three in one compiled
elementwise kernel (torch.compile / inductor): it reads the bf16 gradient, updates the fp32 master
weight and the moments with torch's Adam arithmetic (L2 weight decay, bias correction, ``eps``
after the square root, all in fp32) and writes the refreshed bf16 copy.

The moments are stored in fp32 (``moments="fp32"``: the same bytes per parameter as a fused Adam
step over fp32 gradients, the floor bench_fusion prices) or, as a measured option, in bf16
(``moments="bf16"``): both moments of a weight packed in one 32-bit word, 4 bytes instead of 8,
which cuts the kernel's traffic from 28 to 20 bytes per weight. The arithmetic stays fp32; each
moment is rounded to bf16 *stochastically* on the way out. Round-to-nearest would freeze the
second moment: its per-step decay (x 0.999) is smaller than half a bf16 ulp (2^-9), so a decayed
value rounds back to itself. The dither is a hash of the updated master weight's bits and the
step: deterministic for a seed, unrelated to the moment being rounded.

Measured on the 2-core bench machine (28.8 M weights, ms per step): alone on 1 thread the packed
kernel is slower (23.7 vs 20.1: a core's own bandwidth and the integer work bound it), on 2
threads faster (14.3 vs 16.9); two stacks training side by side at 1 thread each, the search's
setting, share the memory bus, and there whole steps took 15.0 vs 17.2 (d=64), 27.0 vs 28.4
(d=128) and within noise at d=256.

Where torch.compile cannot build the kernel (no C++ compiler, unsupported platform) the same
arithmetic runs eagerly in torch ops: slower, same results up to float rounding order.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch

Kernel = Callable[..., None]
#: How the Adam moments are stored (the arithmetic is fp32 either way).
Moments = Literal["fp32", "bf16"]


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


#: The high 16 bits of an int32 (0xFFFF0000): where a bf16 value sits in an fp32 bit pattern.
_HIGH = -65536
_LOW = 0xFFFF
#: Odd multipliers of the dither hash (2654435761 and 2246822507 as int32s).
_MIX1, _MIX2 = -1640531535, -2048144789


def adam_cast_update_packed(
    param: torch.Tensor,
    grad: torch.Tensor,
    moments: torch.Tensor,
    low: torch.Tensor,
    scalars: torch.Tensor,
    seed: torch.Tensor,
    beta1: float,
    beta2: float,
    weight_decay: float,
    eps: float,
) -> None:
    """:func:`adam_cast_update` with both moments stored as bf16 in one int32 per weight.

    ``moments`` holds ``m``'s bf16 bits in its high half and ``v``'s in its low half. They are
    unpacked to fp32 (exact), updated in fp32, and rounded back stochastically: adding a uniform
    16-bit dither to the fp32 bit pattern before truncating rounds up with probability equal to
    the discarded fraction, so the stored moment is unbiased (sign-magnitude floats: the same
    holds for negative ``m``). The dither is a hash of the updated master's bits and ``seed``
    (an int32 that changes every step, so a weight that stops moving still gets fresh dither):
    integer arithmetic in the same loop, ~5 % slower than reusing the master's low bits. Weights
    of equal value share their dither; trained weights start from a random init, so they do not
    (hashing in the element's index as well cost 40 % more time at 1 thread).
    """
    import torch

    step_size, inv_bc2_sqrt = scalars[0], scalars[1]
    g = grad.float() + weight_decay * param
    m0 = (moments & _HIGH).view(torch.float32)
    v0 = (moments << 16).view(torch.float32)
    m = m0 + (g - m0) * (1 - beta1)
    v = v0 * beta2 + (1 - beta2) * g * g
    p = param - step_size * m / (v.sqrt() * inv_bc2_sqrt + eps)
    mixed = (p.view(torch.int32) ^ seed) * _MIX1
    mixed = (mixed ^ (mixed >> 15)) * _MIX2
    m_bits = (m.view(torch.int32) + ((mixed >> 16) & _LOW)) & _HIGH
    v_bits = ((v.view(torch.int32) + (mixed & _LOW)) >> 16) & _LOW
    moments.copy_(m_bits | v_bits)
    param.copy_(p)
    low.copy_(p)


def unpack_moments(moments: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 copies of ``(m, v)`` from a packed moments buffer."""
    import torch

    return (moments & _HIGH).view(torch.float32), (moments << 16).view(torch.float32)


#: The eager arithmetic of each moment storage.
EAGER: dict[str, Kernel] = {"fp32": adam_cast_update, "bf16": adam_cast_update_packed}
_COMPILED: dict[str, Kernel] = {}
#: Inductor options of the kernel (see :func:`_compiled_kernel`).
_COMPILE_OPTIONS: dict[str, str | int | bool | Callable[..., object]] = {"cpp_wrapper": True}
#: Compiling is not safe from two threads at once (stacks may train side by side).
_COMPILE_LOCK = threading.Lock()


def compiled_kernel(moments: Moments = "fp32") -> Kernel | None:
    """The compiled Adam kernel of ``moments`` (built and checked once per process), or None."""
    with _COMPILE_LOCK:
        return _compiled_kernel(moments)


def _compiled_kernel(moments: Moments) -> Kernel | None:
    if moments in _COMPILED:
        return _COMPILED[moments]
    import torch

    try:
        # Static shapes: ~15 % faster than a dynamic-length kernel; each stack is one flat buffer,
        # so a search compiles one kernel per stack shape (about a second each).
        # cpp_wrapper: the kernel runs with the GIL released (inductor's default Python binding
        # holds it for the whole kernel, ~25 ms at d=256, which stalls a stack training beside
        # this one in another thread: measured as 30 ms gaps in a Python loop, 5 ms with it).
        kernel = torch.compile(
            EAGER[moments], dynamic=False, fullgraph=True, options=_COMPILE_OPTIONS
        )
        _self_check(kernel, moments)
    except Exception as error:
        # Any failure to build (no C++ compiler, unsupported platform) means the eager path:
        # same arithmetic, slower, so say so rather than fail the search.
        logging.getLogger(__name__).warning("compiled Adam unavailable, eager fallback: %s", error)
        return None
    _COMPILED[moments] = kernel
    return kernel


def _self_check(kernel: Kernel, moments: Moments) -> None:
    """Run the kernel once on a small tensor and compare it with the eager arithmetic."""
    import torch

    generator = torch.Generator().manual_seed(0)
    p, g, m, v = (torch.rand(257, generator=generator) for _ in range(4))
    step = _step_tensors(moments, 1e-3, 0.5, seed=12345)
    outs = []
    for fn in (kernel, EAGER[moments]):
        state = _initial_state(moments, m, v)
        param, low = p.clone(), torch.empty_like(p, dtype=torch.bfloat16)
        fn(param, g.to(torch.bfloat16), *state, low, *step, 0.9, 0.999, 1e-5, 1e-8)
        outs.append((param, low, *_as_fp32(moments, state)))
    for a, b in zip(*outs, strict=True):
        # A packed moment may land one bf16 ulp apart: its dither comes from the master's bits.
        if not torch.allclose(a.float(), b.float(), rtol=1e-2 if moments == "bf16" else 1e-5):
            raise RuntimeError("compiled Adam kernel disagrees with the eager arithmetic")


def _initial_state(moments: Moments, m: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The kernel's moment arguments holding ``m`` and ``v`` (rounded to bf16 when packed)."""
    import torch

    if moments == "fp32":
        return m.clone(), v.clone()
    m_bits = m.to(torch.bfloat16).float().view(torch.int32)
    v_bits = v.to(torch.bfloat16).float().view(torch.int32)
    return ((m_bits & _HIGH) | ((v_bits >> 16) & _LOW),)


def _step_tensors(
    moments: Moments, step_size: float, inv_bc2_sqrt: float, seed: int, device: str = "cpu"
) -> tuple[torch.Tensor, ...]:
    """The step-dependent kernel arguments, as tensors so that no step triggers a recompile."""
    import torch

    scalars = torch.tensor([step_size, inv_bc2_sqrt], dtype=torch.float32, device=device)
    if moments == "fp32":
        return (scalars,)
    # Wrapped to a signed 32-bit value: the dither hash works on int32 bit patterns.
    wrapped = (seed * 0x9E3779B9) % 2**32
    signed = wrapped - 2**32 if wrapped >= 2**31 else wrapped
    return scalars, torch.tensor(signed, dtype=torch.int32, device=device)


def _as_fp32(moments: Moments, state: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    return tuple(state) if moments == "fp32" else unpack_moments(state[0])


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
        moments: Moments = "fp32",
    ) -> None:
        import torch

        self.master = torch.cat([w.detach().reshape(-1) for w in weights])
        self.low = self.master.to(low_dtype)
        self.grad = torch.zeros_like(self.low)
        self.moments: Moments = moments
        zeros = torch.zeros_like(self.master)
        self.state = _initial_state(moments, zeros, zeros)
        shapes = [tuple(w.shape) for w in weights]
        self.params = _views(self.master, shapes)
        self.grads = _views(self.grad, shapes)
        self.lows = _views(self.low, shapes)
        self.lr, self.weight_decay, self.betas, self.eps = lr, weight_decay, betas, eps
        self.steps = 0
        compiled = compiled_kernel(moments)
        self.compiled = compiled is not None
        self.kernel: Kernel = compiled if compiled is not None else EAGER[moments]

    def moment_values(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The first and second moments as flat fp32 tensors (copies when packed)."""
        m, v = _as_fp32(self.moments, self.state)
        return m, v

    def _step_tensors(self) -> tuple[torch.Tensor, ...]:
        beta1, beta2 = self.betas
        step_size = self.lr / (1 - beta1**self.steps)
        inv_bc2_sqrt = 1.0 / math.sqrt(1 - beta2**self.steps)
        device = str(self.master.device)
        return _step_tensors(self.moments, step_size, inv_bc2_sqrt, self.steps, device)

    def step(self) -> None:
        self.steps += 1
        tensors = (self.master, self.grad, *self.state, self.low)
        constants = (*self.betas, self.weight_decay, self.eps)
        if self.steps > 1 or not self.compiled:
            self.kernel(*tensors, *self._step_tensors(), *constants)
            return
        import torch._dynamo

        # The first call compiles this buffer's length; a long search (or a test session) meets
        # more lengths than dynamo's default of 8 per function, after which it would go eager.
        with _COMPILE_LOCK, torch._dynamo.config.patch(recompile_limit=_RECOMPILE_LIMIT):
            self.kernel(*tensors, *self._step_tensors(), *constants)


#: Kernel lengths compiled per process before dynamo falls back to eager (same results, slower).
_RECOMPILE_LIMIT = 256


def _views(flat: torch.Tensor, shapes: Sequence[tuple[int, ...]]) -> list[torch.Tensor]:
    views, start = [], 0
    for shape in shapes:
        size = math.prod(shape)
        views.append(flat[start : start + size].view(shape))
        start += size
    return views
