"""Every published model: the authors' file layout (their released files' keys) loads into the zoo model.

Per model of ``official_state_dict_keys.json`` (each builds a full ImageNet network: slow):

- a file built from the reference key list alone (names, shapes, the authors' dtypes, fp32 masters in
  file order) loads strictly, every tensor landing in the model where its name says;
- a file written from a randomised copy of the model loads back, after which the model computes the
  copy's logits, in eval and in training mode.
"""

from __future__ import annotations

import copy
import gzip
import json
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from attentive_norm.checkpoint import load_checkpoint
from attentive_norm.checkpoint.testing import (
    official_fp32_keys,
    official_state_from_model,
    randomize_state,
    write_official_checkpoint,
)
from attentive_norm.models import create_model, list_models
from attentive_norm.models.official_keys import to_official_key_names

# the keys and shapes of the authors' released state dicts (shipped with the tests)
REFERENCE = json.loads(
    gzip.decompress(
        (Path(__file__).parents[1] / "reference" / "official_state_dict_keys.json.gz").read_bytes()
    )
)
BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def _reference_state(name: str) -> tuple[OrderedDict[str, Tensor], list[Tensor]]:
    """A state dict from the key list alone, with the authors' dtypes, and the fp32 masters."""
    shapes = REFERENCE[name]["state_dict"]
    an_prefixes = {k[: -len("weight_")] for k in shapes if k.endswith(".weight_")}
    generator = torch.Generator().manual_seed(0)
    state: OrderedDict[str, Tensor] = OrderedDict()
    masters = []
    for key, shape in shapes.items():
        module, _, leaf = key.rpartition(".")
        if leaf == "num_batches_tracked":
            state[key] = torch.tensor(1000)
            continue
        value = torch.rand(shape, generator=generator) + 0.5
        an_own = f"{module}." in an_prefixes
        if f"{module}.running_mean" in shapes and f"{module}.weight" in shapes and not an_own:
            state[key] = value  # an affine BatchNorm: apex keeps it fp32
        elif leaf in BUFFERS:
            state[key] = value.half()
        else:
            masters.append(value)
            state[key] = value.half()
    return state, masters


def _check_reference_layout(model: nn.Module, name: str, path: Path) -> None:
    state, masters = _reference_state(name)
    write_official_checkpoint(state, masters, path, arch=name)
    info = load_checkpoint(model, path)
    assert info.weights == "fp32_master", info.note
    expected = dict(state)
    fp16_params = [
        k for k, v in state.items() if v.dtype == torch.float16 and k.rpartition(".")[2] not in BUFFERS
    ]
    expected.update(zip(fp16_params, masters))
    ours = model.state_dict()
    for (key, value), official in zip(ours.items(), to_official_key_names(ours)):
        want = expected[official].reshape(value.shape).to(value.dtype)
        assert torch.equal(value, want), f"{key} (file: {official}) did not land where its name says"


def _randomized_source(model: nn.Module) -> nn.Module:
    """A randomised copy whose fp16-stored buffers are exactly representable (no masters for those)."""
    source = copy.deepcopy(model)
    randomize_state(source, seed=1)
    fp32 = official_fp32_keys(source)
    parameters = {n for n, _ in source.named_parameters()}
    with torch.no_grad():
        for key, value in source.state_dict().items():
            if value.is_floating_point() and key not in fp32 and key not in parameters:
                value.copy_(value.half().float())
    return source


def _seeded(model: nn.Module, x: Tensor) -> Tensor:
    torch.manual_seed(0)  # the same dropout masks for both models in training mode
    return model(x)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(REFERENCE))
def test_authors_files_load_into_zoo_model(name: str, tmp_path: Path) -> None:
    if name not in list_models():
        pytest.skip(f"{name} is not registered in the zoo (yet)")
    model = create_model(name)
    source = _randomized_source(model)  # from the fresh model: the reference values would overflow
    _check_reference_layout(model, name, tmp_path / "reference.pth.tar")

    path = tmp_path / "model_best.pth.tar"
    write_official_checkpoint(*official_state_from_model(source), path, arch=name)
    info = load_checkpoint(model, path)
    assert info.weights == "fp32_master" and info.model_name == name, info.note
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        for train in (False, True):
            source.train(train)
            model.train(train)
            torch.testing.assert_close(_seeded(model, x), _seeded(source, x))
