"""CastingAdam: torch's Adam arithmetic on fp32 masters from bf16 gradients, bf16 copies refreshed.

Checked against ``torch.optim.Adam`` (fused, L2 weight decay) fed the same gradients upcast to
fp32: the update is the same formula in fp32, so they agree to float rounding (inductor may order
the operations differently), over enough steps for bias correction and decay to matter.
"""

from __future__ import annotations

import pytest
import torch

from meragent.finetune import fusion_adam
from meragent.finetune.fusion_adam import CastingAdam, adam_cast_update

SHAPES = [(2, 5, 12), (2, 1, 12), (3, 7)]


def _weights(seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator) for shape in SHAPES]


def _grads(step: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(100 + step)
    return [torch.randn(shape, generator=generator).to(torch.bfloat16) for shape in SHAPES]


def _run_both(adam: CastingAdam, steps: int) -> list[torch.Tensor]:
    """Step ``adam`` and a torch Adam on copies of its starting weights; torch's weights."""
    reference = [p.detach().clone() for p in adam.params]
    torch_adam = torch.optim.Adam(reference, lr=1e-2, weight_decay=1e-3, fused=True)
    for step in range(steps):
        for mine, ref, grad in zip(adam.grads, reference, _grads(step), strict=True):
            mine.copy_(grad)
            ref.grad = grad.float()
        adam.step()
        torch_adam.step()
    return reference


@pytest.mark.parametrize("compiled", [True, False])
def test_casting_adam_matches_torch_adam_and_refreshes_the_bf16_copies(
    compiled: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not compiled:
        monkeypatch.setattr(fusion_adam, "compiled_kernel", lambda: None)
    weights = _weights()
    adam = CastingAdam(weights, torch.bfloat16, lr=1e-2, weight_decay=1e-3)
    assert adam.compiled is (compiled and fusion_adam.compiled_kernel() is not None)
    # The masters are copies: the trainer swaps its tensors for these views.
    assert all(torch.equal(p, w) for p, w in zip(adam.params, weights, strict=True))
    assert adam.params[0].data_ptr() != weights[0].data_ptr()
    reference = _run_both(adam, steps=25)
    for mine, ref, start in zip(adam.params, reference, _weights(), strict=True):
        assert mine.dtype == torch.float32 and mine.shape == ref.shape
        torch.testing.assert_close(mine, ref, rtol=1e-5, atol=1e-6)
        assert (mine - start).abs().min() > 1e-5  # every weight moved
    for low, master in zip(adam.lows, adam.params, strict=True):
        assert low.dtype == torch.bfloat16
        assert torch.equal(low, master.to(torch.bfloat16))
    assert adam.exp_avg.dtype == adam.exp_avg_sq.dtype == torch.float32


def test_a_failing_compiler_falls_back_to_the_eager_arithmetic(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_compiler(*_args: object, **_kwargs: object) -> object:
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(fusion_adam, "_COMPILED", [])
    monkeypatch.setattr(torch, "compile", no_compiler)
    adam = CastingAdam(_weights(), torch.bfloat16, lr=1e-2, weight_decay=1e-3)
    assert not adam.compiled and adam.kernel is adam_cast_update
    reference = _run_both(adam, steps=3)
    for mine, ref in zip(adam.params, reference, strict=True):
        torch.testing.assert_close(mine, ref, rtol=1e-5, atol=1e-6)


def test_the_kernel_is_built_to_release_the_gil(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inductor's default binding holds the GIL for the whole kernel, which stalls a stack
    training in another thread (``stack_workers``); its cpp_wrapper build releases it."""
    seen: list[dict[str, object]] = []
    real = torch.compile

    def spy(fn: object, **kwargs: object) -> object:
        seen.append(kwargs)
        return real(fn, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(fusion_adam, "_COMPILED", [])
    monkeypatch.setattr(torch, "compile", spy)
    assert fusion_adam.compiled_kernel() is not None
    (kwargs,) = seen
    assert kwargs["options"] == {"cpp_wrapper": True}
    assert kwargs["dynamic"] is False
