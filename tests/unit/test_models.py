"""Models: sizes as documented, deterministic initial weights, forward shapes."""

import pytest
import torch

from swarmnode.aggregation.codec import model_hash
from swarmnode.learning.errors import UnknownName
from swarmnode.learning.models import build_model, num_parameters
from swarmnode.learning.tasks import TASK_PRESETS, Task, genesis_model_hash


@pytest.mark.parametrize("name, low, high", [("federated-net", 1.1e6, 1.3e6), ("small-cnn", 1.8e5, 2.3e5),
                                             ("mlp", 1.8e5, 2.2e5), ("resnet", 1.1e7, 1.13e7)])
def test_sizes_and_forward(name, low, high):
    model = build_model(name, 0)
    assert low <= num_parameters(model) <= high
    assert model(torch.zeros(5, 1, 28, 28)).shape == (5, 10)


def test_initial_weights_depend_only_on_name_and_seed():
    torch.manual_seed(123)
    a = model_hash(build_model("small-cnn", 4).state_dict())
    torch.manual_seed(999)
    torch.rand(10)
    b = model_hash(build_model("small-cnn", 4).state_dict())
    c = model_hash(build_model("small-cnn", 5).state_dict())
    assert a == b and a != c


def test_genesis_hash_is_stable_for_presets():
    h = genesis_model_hash(TASK_PRESETS["tiny"])
    assert h == genesis_model_hash(Task.from_dict(TASK_PRESETS["tiny"])) and len(h) == 32


def test_unknown_names_are_typed_errors():
    with pytest.raises(UnknownName, match="resnet50"):
        build_model("resnet50", 0)
    from swarmnode.learning.errors import LearningError

    with pytest.raises(LearningError, match="unknown task keys"):
        Task.from_dict({"modle": "mlp"})


def test_resnet_has_no_running_statistics_and_a_width():
    from swarmnode.learning.models import ModelSpec, ModelSpecError

    model = build_model(ModelSpec.of("resnet", {"width": 8}), 0)
    assert not list(model.buffers()), "group norm: nothing a skewed client could corrupt outside the parameters"
    assert 1.5e5 < num_parameters(model) < 2e5
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(ModelSpecError, match="width"):
        build_model(ModelSpec.of("resnet", {"width": 0}), 0)
