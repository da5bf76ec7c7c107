"""Per-example gradients with torch.func, and the one-at-a-time fallback for models vmap cannot batch."""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import ATOL, RTOL
from fixtures.tiny_models import build_lstm, build_mlp
from reference import reference_grads

from influence_cli.gradients.layers import select_parameters
from influence_cli.gradients.per_example import PerExampleGradients
from influence_cli.losses import BUILTIN_LOSSES


def _flat(reference: dict[str, torch.Tensor], layer_names: tuple[str, ...]) -> torch.Tensor:
    return torch.cat([reference[name] for name in layer_names])


@pytest.mark.parametrize("factory, make_inputs", [
    (build_mlp, lambda g: torch.randn(7, 6, generator=g, dtype=torch.float64)),
    (build_lstm, lambda g: torch.randint(0, 20, (7, 5), generator=g)),
])
def test_gradients_match_the_reference(factory, make_inputs) -> None:
    gen = torch.Generator().manual_seed(3)
    torch.manual_seed(3)
    model = factory().to(torch.float64).eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    inputs, labels = make_inputs(gen), torch.randint(0, 3, (7,), generator=gen)
    layout = select_parameters(model, None)
    computer = PerExampleGradients(model, layout, BUILTIN_LOSSES["cross_entropy"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = computer(dict(model.state_dict()), inputs, labels).g
        computer(dict(model.state_dict()), inputs, labels)  # the fallback, once chosen, is kept
    expected = torch.stack([_flat(r, layout.layer_names) for r in reference_grads(factory, [state], inputs, labels)[0]])
    torch.testing.assert_close(got, expected, rtol=RTOL, atol=ATOL)
    fallback = [w for w in caught if "one example at a time" in str(w.message)]
    assert computer.batched is (factory is build_mlp)
    assert len(fallback) == (0 if factory is build_mlp else 1)


def test_an_error_that_is_not_about_batching_is_raised() -> None:
    model = build_mlp().to(torch.float64).eval()
    computer = PerExampleGradients(model, select_parameters(model, None), BUILTIN_LOSSES["cross_entropy"])
    with pytest.raises(RuntimeError):
        computer(dict(model.state_dict()), torch.randn(4, 5, dtype=torch.float64), torch.zeros(4, dtype=torch.long))
    assert computer.batched
