"""Fusion architectures (Eq. 1-3, MERTools variant), stacked-parameter helpers, save/load."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from meragent.errors import DataError, ModelLoadError
from meragent.schema import EMOTIONS
from meragent.tools.fusion_model import (
    ARCHITECTURES,
    BranchConfig,
    FusionModelConfig,
    FusionPredictor,
    get_architecture,
    init_stacked_params,
    load_fusion_model,
    select_combo,
    stacked_shape,
    where_combos,
)


def _params(arch_name: str, dims: list[int], hidden: int, folds: int, combos: int, seed: int = 0):
    arch = get_architecture(arch_name)
    specs = arch.param_specs(dims, hidden, len(EMOTIONS))
    generators = [torch.Generator().manual_seed(seed + c) for c in range(combos)]
    return arch, specs, init_stacked_params(specs, folds, generators)


def test_registry_names_both_models() -> None:
    assert set(ARCHITECTURES) == {"attention", "mertools_attention"}
    with pytest.raises(DataError, match="unknown fusion model 'nope'"):
        get_architecture("nope")


def test_attention_matches_eq_1_to_3_by_hand() -> None:
    arch = get_architecture("attention")
    # One fold, one combination, d = 2; branch 0 has 2 inputs, branch 1 has 1.
    params = {
        "enc0.weight": torch.tensor([[[1.0, 0.0], [0.0, 2.0]]]),
        "enc0.bias": torch.tensor([[[0.0, -1.0]]]),
        "enc1.weight": torch.tensor([[[3.0, -1.0]]]),
        "enc1.bias": torch.tensor([[[0.5, 0.5]]]),
        "att.weight": torch.tensor([[[1.0, -1.0]]]),
        "att.bias": torch.tensor([[0.25]]),
        "out.weight": torch.eye(2, 6).reshape(1, 1, 2, 6),
        "out.bias": torch.zeros(1, 1, 6),
        "val.weight": torch.tensor([[[1.0, 1.0]]]),
        "val.bias": torch.tensor([[0.0]]),
    }
    x0, x1 = np.array([2.0, 1.5]), np.array([1.0])
    h0 = np.maximum(x0 @ np.array([[1.0, 0.0], [0.0, 2.0]]) + [0.0, -1.0], 0)  # [2, 2]
    h1 = np.maximum(x1 @ np.array([[3.0, -1.0]]) + [0.5, 0.5], 0)  # [3.5, 0]
    scores = np.array([h0 @ [1.0, -1.0] + 0.25, h1 @ [1.0, -1.0] + 0.25])
    alpha = np.exp(scores) / np.exp(scores).sum()
    z = alpha[0] * h0 + alpha[1] * h1
    xs = [torch.tensor(x0[None], dtype=torch.float32), torch.tensor(x1[None], dtype=torch.float32)]
    mask = torch.ones(1, 1, 1, 2, dtype=torch.bool)
    out = arch.forward(params, xs, mask, n_combos=1)
    np.testing.assert_allclose(out.attention[0, 0, 0].numpy(), alpha, rtol=1e-6)
    np.testing.assert_allclose(out.logits[0, 0, 0, :2].numpy(), z, rtol=1e-6)
    assert out.valence[0, 0, 0].item() == pytest.approx(z.sum(), rel=1e-6)


@pytest.mark.parametrize("name", ["attention", "mertools_attention"])
def test_masked_branch_gets_zero_weight(name: str) -> None:
    arch, _, params = _params(name, [5, 4, 3], hidden=6, folds=2, combos=3)
    xs = [torch.randn(7, d) for d in (5, 4, 3)]
    mask = torch.ones(1, 7, 1, 3, dtype=torch.bool)
    mask[0, :3, 0, 1] = False  # branch 1 missing for rows 0-2
    out = arch.forward(params, xs, mask, n_combos=3)
    assert out.logits.shape == (2, 7, 3, 6)
    assert out.valence.shape == (2, 7, 3)
    assert out.attention.shape == (2, 7, 3, 3)
    assert torch.all(out.attention[:, :3, :, 1] == 0)
    if name == "attention":
        torch.testing.assert_close(out.attention.sum(-1), torch.ones(2, 7, 3))
        assert torch.all(out.attention[:, 3:, :, 1] > 0)


def test_masked_branch_values_do_not_matter() -> None:
    arch, _, params = _params("attention", [4, 4], hidden=5, folds=1, combos=1)
    mask = torch.tensor([True, False]).view(1, 1, 1, 2)
    first = [torch.randn(1, 4), torch.zeros(1, 4)]
    second = [first[0], torch.full((1, 4), 1e3)]
    a = arch.forward(params, first, mask, n_combos=1).logits
    b = arch.forward(params, second, mask, n_combos=1).logits
    torch.testing.assert_close(a, b)


def test_mertools_weights_are_raw_not_normalised() -> None:
    arch, _, params = _params("mertools_attention", [4, 4, 4], hidden=8, folds=1, combos=1)
    out = arch.forward(
        params,
        [torch.randn(16, 4) for _ in range(3)],
        torch.ones(1, 16, 1, 3, dtype=torch.bool),
        n_combos=1,
    )
    sums = out.attention.sum(-1)
    assert not torch.allclose(sums, torch.ones_like(sums))
    # 3-layer MLP encoders per branch, and a 3-layer attention MLP over the concatenation.
    assert {"enc0.l3.weight", "att.l1.weight", "att.l3.weight", "att.fc.weight"} <= set(params)
    assert params["att.l1.weight"].shape == (1, 1, 24, 8)


def test_stacked_combinations_are_independent_models() -> None:
    arch, specs, params = _params("attention", [6, 3], hidden=4, folds=2, combos=3)
    xs = [torch.randn(5, 6), torch.randn(5, 3)]
    mask = torch.ones(1, 5, 1, 2, dtype=torch.bool)
    stacked = arch.forward(params, xs, mask, n_combos=3).logits
    for c in range(3):
        alone = arch.forward(select_combo(specs, params, c, 3), xs, mask, n_combos=1).logits
        torch.testing.assert_close(alone[:, :, 0], stacked[:, :, c])


def test_where_combos_copies_only_chosen_slices() -> None:
    _, specs, new = _params("attention", [3], hidden=2, folds=2, combos=2, seed=1)
    _, _, old = _params("attention", [3], hidden=2, folds=2, combos=2, seed=5)
    before = {k: v.clone() for k, v in old.items()}
    chosen = torch.tensor([[True, False], [False, False]])
    where_combos(specs, chosen, new, old, 2)
    torch.testing.assert_close(
        select_combo(specs, old, 0, 2)["enc0.weight"][0],
        select_combo(specs, new, 0, 2)["enc0.weight"][0],
    )
    torch.testing.assert_close(
        select_combo(specs, old, 0, 2)["enc0.weight"][1],
        select_combo(specs, before, 0, 2)["enc0.weight"][1],
    )
    torch.testing.assert_close(old["att.weight"][:, 1], before["att.weight"][:, 1])


def test_manual_first_layer_gradient_equals_autograd() -> None:
    arch, _, params = _params("attention", [6, 4], hidden=3, folds=2, combos=2)
    xs = [torch.randn(2, 5, 6), torch.randn(2, 5, 4)]
    mask = torch.ones(2, 5, 1, 2, dtype=torch.bool)
    labels = torch.randint(0, 6, (2, 5, 2))
    for tensor in params.values():
        tensor.requires_grad_(True)
    out = arch.forward(params, xs, mask, n_combos=2)
    torch.nn.functional.cross_entropy(out.logits.reshape(-1, 6), labels.reshape(-1)).backward()
    with torch.no_grad():
        pres = arch.pre_activations(params, xs, 2)
    for pre in pres:
        pre.requires_grad_(True)
    out = arch.head(params, pres, mask)
    torch.nn.functional.cross_entropy(out.logits.reshape(-1, 6), labels.reshape(-1)).backward()
    for m, x in enumerate(xs):
        manual = torch.bmm(x.transpose(1, 2), pres[m].grad)
        torch.testing.assert_close(manual, params[f"enc{m}.weight"].grad)
        torch.testing.assert_close(pres[m].grad.sum(1, keepdim=True), params[f"enc{m}.bias"].grad)


def _save_model(tmp_path: Path, *, with_valence: bool = False, dims=(4, 3)) -> Path:
    arch = get_architecture("attention")
    specs = arch.param_specs(list(dims), 5, 6)
    params = init_stacked_params(specs, 3, [torch.Generator().manual_seed(0)])
    from safetensors.torch import save_file

    out = tmp_path / "model"
    out.mkdir()
    save_file(params, str(out / "model.safetensors"))
    config = FusionModelConfig(
        model="attention",
        branches=[
            BranchConfig(name="a", encoders=["a"], dim=dims[0], encoder_dims=[dims[0]]),
            BranchConfig(name="b", encoders=["b"], dim=dims[1], encoder_dims=[dims[1]]),
        ],
        hidden=5,
        dropout=0.3,
        lr=1e-3,
        weight_decay=1e-5,
        batch_size=32,
        epochs=100,
        folds=3,
        seed=0,
        with_valence=with_valence,
    )
    (out / "config.json").write_text(config.model_dump_json(), encoding="utf-8")
    return out


def test_load_and_predict_one_clip(tmp_path: Path) -> None:
    predictor = load_fusion_model(_save_model(tmp_path, with_valence=True))
    assert isinstance(predictor, FusionPredictor)
    assert predictor.encoders == ["a", "b"]
    both = predictor.predict({"a": np.ones(4), "b": np.ones(3)})
    assert list(both.probs) == list(EMOTIONS)
    assert sum(both.probs.values()) == pytest.approx(1.0)
    assert sum(both.attention.values()) == pytest.approx(1.0)
    assert isinstance(both.valence, float)
    only_a = predictor.predict({"a": np.ones(4), "b": None})
    assert only_a.attention == {"a": pytest.approx(1.0), "b": 0.0}
    assert only_a.discrete in EMOTIONS


def test_predict_errors_name_the_encoder(tmp_path: Path) -> None:
    predictor = load_fusion_model(_save_model(tmp_path))
    with pytest.raises(DataError, match=r"encoder .b.: got 5 feature values, .* expects 3"):
        predictor.predict({"a": np.ones(4), "b": np.ones(5)})
    with pytest.raises(DataError, match="no features for any fusion input"):
        predictor.predict({"a": None})
    assert predictor.predict({"a": np.ones(4), "b": np.ones(3)}).valence is None


def test_load_rejects_broken_model_dirs(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not a directory"):
        load_fusion_model(tmp_path / "missing")
    model = _save_model(tmp_path)
    config = json.loads((model / "config.json").read_text())
    config["hidden"] = 7
    (model / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=r"enc0.weight has shape \(3, 4, 5\), expected"):
        load_fusion_model(model)
    (model / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="not valid JSON"):
        load_fusion_model(model)


def test_stacked_shapes() -> None:
    specs = get_architecture("attention").param_specs([10], 4, 6)
    assert stacked_shape(specs["enc0.weight"], 5, 3) == (5, 10, 12)
    assert stacked_shape(specs["enc0.bias"], 5, 3) == (5, 1, 12)
    assert stacked_shape(specs["out.weight"], 5, 3) == (5, 3, 4, 6)
    assert stacked_shape(specs["att.bias"], 5, 3) == (5, 3)
