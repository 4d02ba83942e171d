"""CastingAdam: torch's Adam arithmetic on fp32 masters from bf16 gradients, bf16 copies refreshed.

Checked against ``torch.optim.Adam`` (fused, L2 weight decay) fed the same gradients upcast to
fp32: the update is the same formula in fp32, so they agree to float rounding (inductor may order
the operations differently), over enough steps for bias correction and decay to matter.
"""

from __future__ import annotations

import pytest
import torch

from meragent.finetune import fusion_adam
from meragent.finetune.fusion_adam import (
    CastingAdam,
    adam_cast_update,
    adam_cast_update_packed,
    unpack_moments,
)

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
        monkeypatch.setattr(fusion_adam, "compiled_kernel", lambda *_: None)
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
    assert [m.dtype for m in adam.state] == [torch.float32, torch.float32]


def test_a_failing_compiler_falls_back_to_the_eager_arithmetic(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_compiler(*_args: object, **_kwargs: object) -> object:
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(fusion_adam, "_COMPILED", {})
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

    monkeypatch.setattr(fusion_adam, "_COMPILED", {})
    monkeypatch.setattr(torch, "compile", spy)
    assert fusion_adam.compiled_kernel() is not None
    (kwargs,) = seen
    assert kwargs["options"] == {"cpp_wrapper": True}
    assert kwargs["dynamic"] is False


def _torch_moments(optimizer: torch.optim.Optimizer) -> tuple[torch.Tensor, torch.Tensor]:
    states = [optimizer.state[p] for p in optimizer.param_groups[0]["params"]]
    m = torch.cat([s["exp_avg"].reshape(-1) for s in states])
    v = torch.cat([s["exp_avg_sq"].reshape(-1) for s in states])
    return m, v


@pytest.mark.parametrize("compiled", [True, False])
def test_bf16_moments_track_torch_adam_within_bf16_rounding(
    compiled: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not compiled:
        monkeypatch.setattr(fusion_adam, "compiled_kernel", lambda *_: None)
    shape = (2, 64, 48)
    generator = torch.Generator().manual_seed(0)
    start = torch.randn(shape, generator=generator)
    adam = CastingAdam([start], torch.bfloat16, lr=1e-3, weight_decay=1e-5, moments="bf16")
    assert adam.compiled is (compiled and fusion_adam.compiled_kernel("bf16") is not None)
    assert [m.dtype for m in adam.state] == [torch.int32]  # both moments in 4 bytes
    reference = [start.clone()]
    torch_adam = torch.optim.Adam(reference, lr=1e-3, weight_decay=1e-5, fused=True)
    for _ in range(40):
        grad = torch.randn(shape, generator=generator).to(torch.bfloat16)
        adam.grads[0].copy_(grad)
        reference[0].grad = grad.float()
        adam.step()
        torch_adam.step()
    mine_m, mine_v = adam.moment_values()
    # Stored moments are bf16 values (8-bit mantissa): within a few bf16 ulps of torch's.
    ref_m, ref_v = _torch_moments(torch_adam)
    assert torch.equal(mine_m, mine_m.to(torch.bfloat16).float())
    # Each stored moment carries its own rounding noise (about 1 % of v, 0.5 % of m here), but
    # stochastic rounding leaves no bias: round-to-nearest would let v drift off (see below).
    v_error = (mine_v - ref_v).abs() / ref_v
    assert v_error.mean() < 0.015 and v_error.max() < 0.08
    assert abs((mine_v - ref_v).mean() / ref_v.mean()) < 0.003
    assert (mine_m - ref_m).abs().mean() < 0.01 * ref_m.abs().mean()
    assert abs((mine_m - ref_m).mean()) < 0.003 * ref_m.abs().mean()
    moved = (reference[0] - start).abs().mean()
    assert moved > 4e-3  # 40 steps of about lr each, in random directions
    # The weights follow torch's to about 1 % of how far they moved.
    assert (adam.params[0] - reference[0]).abs().mean() < 0.01 * moved
    assert torch.equal(adam.lows[0], adam.params[0].to(torch.bfloat16))


def test_stochastic_rounding_lets_the_second_moment_decay() -> None:
    """After one gradient of 1 and zeros since, v = 0.001 * 0.999^(t-1) (fp32 moments).

    Rounded to nearest bf16, x 0.999 is under half an ulp and v would never decay; rounded
    stochastically it decays like fp32 on average over the weights.
    """
    n, steps = 4096, 700
    start = torch.randn(n, generator=torch.Generator().manual_seed(3))  # like a random init
    adam = CastingAdam([start], torch.bfloat16, lr=1e-3, weight_decay=0.0, moments="bf16")
    adam.grads[0].fill_(1.0)
    adam.step()
    adam.grads[0].zero_()
    for _ in range(steps - 1):
        adam.step()
    _, v = adam.moment_values()
    expected = 0.001 * 0.999 ** (steps - 1)
    assert abs(v.mean().item() / expected - 1) < 0.01
    # The same decay rounded to nearest bf16 stays where it started.
    nearest = torch.tensor(0.001, dtype=torch.bfloat16)
    for _ in range(steps - 1):
        nearest = (nearest.float() * 0.999).to(torch.bfloat16)
    assert nearest.item() == torch.tensor(0.001, dtype=torch.bfloat16).item()


def test_bf16_moments_are_deterministic_and_unpack_exactly() -> None:
    def run() -> CastingAdam:
        generator = torch.Generator().manual_seed(1)
        adam = CastingAdam(
            [torch.randn(3, 8, 16, generator=generator)],
            torch.bfloat16,
            lr=1e-2,
            weight_decay=1e-5,
            moments="bf16",
        )
        for _ in range(5):
            adam.grads[0].copy_(torch.randn(3, 8, 16, generator=generator))
            adam.step()
        return adam

    first, second = run(), run()
    assert torch.equal(first.state[0], second.state[0])
    assert torch.equal(first.master, second.master)
    m, v = unpack_moments(first.state[0])
    packed = (m.view(torch.int32) & -65536) | ((v.view(torch.int32) >> 16) & 0xFFFF)
    assert torch.equal(packed, first.state[0]) and (v >= 0).all()


def test_the_packed_kernel_rounds_each_moment_to_a_neighbouring_bf16_value() -> None:
    """One eager step from known moments: each stored moment is the fp32 result rounded down or
    up to a bf16 neighbour, never further."""
    generator = torch.Generator().manual_seed(2)
    n = 1000
    p, g = torch.randn(n, generator=generator), torch.randn(n, generator=generator)
    m, v = torch.zeros(n), torch.zeros(n)
    moments = torch.zeros(n, dtype=torch.int32)
    scalars, seed = torch.tensor([1e-3, 1.0]), torch.tensor(7, dtype=torch.int32)
    low = torch.empty(n, dtype=torch.bfloat16)
    adam_cast_update_packed(
        p.clone(), g.to(torch.bfloat16), moments, low, scalars, seed, 0.9, 0.999, 0.0, 1e-8
    )
    adam_cast_update(p.clone(), g.to(torch.bfloat16), m, v, low, scalars, 0.9, 0.999, 0.0, 1e-8)
    got_m, got_v = unpack_moments(moments)
    for got, exact in ((got_m, m), (got_v, v)):
        down = (exact.view(torch.int32) & -65536).view(torch.float32)
        up = torch.nextafter(down.to(torch.bfloat16), exact.sign().to(torch.bfloat16) * 1e30)
        assert ((got == down) | (got == up.float())).all()
        assert (got == down).any() and (got != down).any()  # both directions happen
