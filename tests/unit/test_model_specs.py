"""Model specs: built-ins on other shapes, torchvision, entry points, pinned initial weights and hashes."""

import hashlib
import importlib
import sys

import pytest
import torch

from swarmnode.aggregation.codec import GlobalModel, model_hash
from swarmnode.learning.errors import LearningError, UnknownName
from swarmnode.learning.models import (
    ModelMismatch,
    ModelSpec,
    ModelSpecError,
    UnknownModel,
    apply_initial_weights,
    build_model,
    check_forward,
    check_initial_hash,
    load_initial_weights,
    save_initial_weights,
)

# The genesis files pin these (genesis/*.toml): a change to a built-in's layers or init order breaks them.
BUILTIN_HASHES = {
    "federated-net": "15f97f66851d50ddd9ca4930786a09db1d9115b493ba2c78d1a488aa7b9ac21b",
    "small-cnn": "291c19676da5995884e7afd4c9ce7d2cf4d65be5a006b20e61bb21bc4260bfc1",
    "mlp": "5e17c08e41f6bfd8e324fd62dad0da0011561cc7f0e0e8ec7b5c96038297d725",
}

ENTRY_MODULE = "swarmnode_test_entry_models"
ENTRY_SOURCE = '''
import torch
from torch import nn

DRAWN_AT_IMPORT = torch.rand(3)  # a module that uses the global RNG when imported
NOT_CALLABLE = 3


class Tiny(nn.Module):
    def __init__(self, num_classes, input_shape, width=8):
        super().__init__()
        self.fc = nn.Linear(input_shape[0], width)
        self.out = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.out(torch.relu(self.fc(x)))


def make(num_classes, input_shape, width=8):
    return Tiny(num_classes, input_shape, width)


class Factories:
    @staticmethod
    def nested(num_classes, input_shape):
        return Tiny(num_classes, input_shape)


def not_a_module(num_classes, input_shape):
    return "a string"


def broken(num_classes, input_shape):
    raise ValueError("boom in the factory")
'''


def state_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture
def entry_module(tmp_path, monkeypatch):
    (tmp_path / f"{ENTRY_MODULE}.py").write_text(ENTRY_SOURCE)
    (tmp_path / "swarmnode_test_entry_broken.py").write_text("raise RuntimeError('boom at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    yield ENTRY_MODULE
    sys.modules.pop(ENTRY_MODULE, None)
    sys.modules.pop("swarmnode_test_entry_broken", None)


# --- ModelSpec --------------------------------------------------------------------------------------------

def test_spec_of_freezes_args_into_a_hashable_canonical_form():
    a = ModelSpec.of("mlp", {"hidden": 64, "sizes": [1, [2, 3]]}, [30], 2)
    b = ModelSpec.of("mlp", {"sizes": [1, [2, 3]], "hidden": 64}, (30,), 2)

    assert a == b and hash(a) == hash(b)
    assert a.args == (("hidden", 64), ("sizes", (1, (2, 3))))
    assert a.input_shape == (30,)
    assert a.kwargs() == {"hidden": 64, "sizes": [1, [2, 3]]}
    assert ModelSpec("mlp") == ModelSpec.of("mlp", None, (1, 28, 28), 10)


@pytest.mark.parametrize("args, match", [
    ({"num_classes": 3}, "'num_classes' is set from the dataset"),
    ({"input_shape": [3]}, "'input_shape' is set from the dataset"),
    ({"table": {"a": 1}}, "'table' is a dict"),
    ({"x": float("nan")}, "'x' is nan"),
    ({"not an identifier": 1}, "not a Python identifier"),
])
def test_spec_refuses_bad_args(args, match):
    with pytest.raises(ModelSpecError, match=match):
        ModelSpec.of("mlp", args)


@pytest.mark.parametrize("name, match", [
    ("", "non-empty"),
    ("torchvision:", "expected 'torchvision:<architecture>'"),
    ("torchvision:res-net", "expected 'torchvision:<architecture>'"),
    ("entrypoint:pkg.mod", "expected 'entrypoint:<package.module>:<factory>'"),
    ("entrypoint:pkg..mod:make", "expected 'entrypoint:<package.module>:<factory>'"),
    ("entrypoint:pkg:make:extra", "expected 'entrypoint:<package.module>:<factory>'"),
])
def test_spec_refuses_malformed_names(name, match):
    with pytest.raises(ModelSpecError, match=match):
        ModelSpec(name)


def test_spec_refuses_unknown_builtin_with_a_typed_error_listing_the_forms():
    with pytest.raises(UnknownModel, match="'resnet50'.*federated-net, small-cnn, mlp, resnet.*torchvision:.*entrypoint:") as info:
        ModelSpec("resnet50")
    assert isinstance(info.value, UnknownName) and isinstance(info.value, LearningError)


@pytest.mark.parametrize("shape, classes, match", [
    ((), 10, "non-empty"), ((3, 0), 10, "positive"), ((30,), 1, "num_classes must be an int >= 2"),
    ((30,), True, "num_classes"),
])
def test_spec_refuses_bad_shapes(shape, classes, match):
    with pytest.raises(ModelSpecError, match=match):
        ModelSpec.of("mlp", None, shape, classes)


# --- built-ins ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(BUILTIN_HASHES))
def test_builtins_keep_their_pinned_initial_weights(name):
    by_name = build_model(name, 0)
    by_spec = build_model(ModelSpec.of(name, None, (1, 28, 28), 10), 0)

    assert state_equal(by_name, by_spec)
    assert model_hash(GlobalModel(by_name.state_dict())).hex() == BUILTIN_HASHES[name]


def test_mlp_on_tabular_rows():
    spec = ModelSpec.of("mlp", {"hidden": 16}, (30,), 2)

    model = build_model(spec, 0)

    assert model(torch.zeros(4, 30)).shape == (4, 2)
    assert model.fc1.weight.shape == (16, 30)
    check_forward(model, spec)


@pytest.mark.parametrize("name", ["small-cnn", "federated-net"])
def test_cnns_on_colour_images(name):
    spec = ModelSpec.of(name, None, (3, 32, 32), 5)

    model = build_model(spec, 0)

    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 5)
    check_forward(model, spec)


@pytest.mark.parametrize("name, shape, match", [
    ("small-cnn", (1, 3, 28), r"'small-cnn' needs an input shape \(C, H, W\) with H, W >= 4, got \(1, 3, 28\)"),
    ("small-cnn", (30,), r"'small-cnn' needs an input shape \(C, H, W\)"),
    ("federated-net", (1, 5, 5), r"'federated-net' needs an input shape \(C, H, W\) with H, W >= 6"),
])
def test_cnns_refuse_inputs_they_cannot_take(name, shape, match):
    with pytest.raises(ModelSpecError, match=match):
        build_model(ModelSpec.of(name, None, shape, 10), 0)


def test_builtin_refuses_unknown_argument_naming_it():
    with pytest.raises(ModelSpecError, match="'small-cnn' with args {'depth': 3} failed to build.*depth"):
        build_model(ModelSpec.of("small-cnn", {"depth": 3}), 0)
    with pytest.raises(ModelSpecError, match="'mlp' needs hidden >= 1, got 0"):
        build_model(ModelSpec.of("mlp", {"hidden": 0}), 0)


def test_weights_are_a_pure_function_of_spec_and_seed():
    spec = ModelSpec.of("mlp", {"hidden": 16}, (30,), 2)
    torch.manual_seed(123)
    a = build_model(spec, 3)
    torch.manual_seed(999)
    before = torch.get_rng_state()
    b = build_model(spec, 3)
    after = torch.get_rng_state()
    c = build_model(spec, 4)

    assert state_equal(a, b)
    assert not state_equal(a, c)
    assert torch.equal(before, after), "building a model moved the caller's global RNG"


# --- torchvision ----------------------------------------------------------------------------------------------

def test_torchvision_resnet18_builds_without_download():
    spec = ModelSpec.of("torchvision:resnet18", None, (3, 32, 32), 7)

    model = build_model(spec, 0)

    assert model.fc.out_features == 7
    check_forward(model, spec)
    assert state_equal(model, build_model(spec, 0))


def test_torchvision_passes_args_as_keywords():
    plain = build_model(ModelSpec.of("torchvision:resnet18", None, (3, 32, 32), 7), 0)
    zeroed = build_model(ModelSpec.of("torchvision:resnet18", {"zero_init_residual": True}, (3, 32, 32), 7), 0)

    assert bool(plain.layer1[0].bn2.weight.ne(0).all())
    assert bool(zeroed.layer1[0].bn2.weight.eq(0).all())


def test_torchvision_unknown_architecture_says_how_to_find_names():
    with pytest.raises(UnknownModel, match=r"'resnet19' \(did you mean resnet18.*list_models\(module="):
        build_model(ModelSpec("torchvision:resnet19"), 0)
    with pytest.raises(UnknownModel, match="classification architecture 'fasterrcnn_resnet50_fpn'"):
        build_model(ModelSpec("torchvision:fasterrcnn_resnet50_fpn"), 0)


@pytest.mark.parametrize("args, match", [
    ({"weights": "DEFAULT"}, "argument 'weights' is not allowed.*never a download"),
    ({"no_such_option": 1}, "failed to build: TypeError.*no_such_option"),
])
def test_torchvision_refuses_downloads_and_bad_args(args, match):
    with pytest.raises(ModelSpecError, match=match):
        build_model(ModelSpec.of("torchvision:resnet18", args, (3, 32, 32), 7), 0)


# --- entry points ------------------------------------------------------------------------------------------

def test_entry_point_gets_shapes_and_args(entry_module):
    spec = ModelSpec.of(f"entrypoint:{entry_module}:make", {"width": 16}, (30,), 3)
    before = torch.get_rng_state()

    model = build_model(spec, 0)

    assert torch.equal(before, torch.get_rng_state()), "importing the entry point moved the global RNG"
    assert model.fc.weight.shape == (16, 30) and model.out.out_features == 3
    check_forward(model, spec)
    assert state_equal(model, build_model(spec, 0))
    assert not state_equal(model, build_model(spec, 1))


def test_entry_point_may_name_a_nested_attribute(entry_module):
    model = build_model(ModelSpec.of(f"entrypoint:{entry_module}:Factories.nested", None, (5,), 2), 0)

    assert model.out.out_features == 2


@pytest.mark.parametrize("target, args, match", [
    ("swarmnode_no_such_module:make", None, "cannot import 'swarmnode_no_such_module': ModuleNotFoundError"),
    ("swarmnode_test_entry_broken:make", None,
     "cannot import 'swarmnode_test_entry_broken': RuntimeError: boom at import"),
    (f"{ENTRY_MODULE}:missing", None, f"'{ENTRY_MODULE}' has no attribute 'missing'"),
    (f"{ENTRY_MODULE}:NOT_CALLABLE", None, "'NOT_CALLABLE' is a int, not callable"),
    (f"{ENTRY_MODULE}:not_a_module", None, "returned a str, not a torch.nn.Module"),
    (f"{ENTRY_MODULE}:broken", None, "failed to build: ValueError: boom in the factory"),
    (f"{ENTRY_MODULE}:make", {"depth": 2}, "failed to build: TypeError.*depth"),
])
def test_entry_point_failures_are_typed_and_name_the_entry_point(entry_module, target, args, match):
    with pytest.raises(ModelSpecError, match=match) as info:
        build_model(ModelSpec.of(f"entrypoint:{target}", args, (5,), 2), 0)
    assert f"entrypoint:{target}" in str(info.value)


def test_check_forward_refuses_wrong_logits():
    model = build_model(ModelSpec.of("mlp", None, (30,), 2), 0)

    with pytest.raises(ModelSpecError, match=r"maps a batch of 2 to \(2, 2\), expected logits \(2, 3\)"):
        check_forward(model, ModelSpec.of("mlp", None, (30,), 3))
    with pytest.raises(ModelSpecError, match=r"fails on a batch of shape \(2, 20\)"):
        check_forward(model, ModelSpec.of("mlp", None, (20,), 2))


# --- initial weights from safetensors ------------------------------------------------------------------------

def test_safetensors_round_trip_with_pinned_hash(tmp_path):
    spec = ModelSpec.of("small-cnn", None, (3, 16, 16), 4)
    source, target = build_model(spec, 0), build_model(spec, 1)
    path = tmp_path / "init.safetensors"

    sha = save_initial_weights(source, path)
    apply_initial_weights(target, load_initial_weights(path, sha))

    assert sha == hashlib.sha256(path.read_bytes()).hexdigest()
    assert state_equal(source, target)
    assert load_initial_weights(path, "0x" + sha.upper()).keys() == source.state_dict().keys()


def test_safetensors_hash_mismatch_names_file_and_both_hashes(tmp_path):
    path = tmp_path / "init.safetensors"
    sha = save_initial_weights(build_model("mlp", 0), path)
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 1
    path.write_bytes(bytes(raw))
    actual = hashlib.sha256(bytes(raw)).hexdigest()

    with pytest.raises(ModelSpecError, match=f"{path.name}.*SHA-256 {actual}, the genesis pins {sha}"):
        load_initial_weights(path, sha)


@pytest.mark.parametrize("content, sha, match", [
    (b"not safetensors", None, "not a valid safetensors file"),
    (b"", "abc", "'abc' is not 64 hex digits"),
])
def test_safetensors_refuses_garbage(tmp_path, content, sha, match):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)

    with pytest.raises(ModelSpecError, match=match):
        load_initial_weights(path, sha)


def test_safetensors_missing_file(tmp_path):
    with pytest.raises(ModelSpecError, match="cannot read initial weights.*absent.safetensors"):
        load_initial_weights(tmp_path / "absent.safetensors", None)


def _mlp_tensors() -> dict[str, torch.Tensor]:
    return {n: t.clone() for n, t in build_model(ModelSpec.of("mlp", {"hidden": 4}, (6,), 2), 0).state_dict().items()}


@pytest.mark.parametrize("edit, match", [
    (lambda t: t.pop("fc3.bias"), "lack 'fc3.bias' of the model's state"),
    (lambda t: [t.pop("fc1.bias"), t.pop("fc2.bias")], "lack 'fc1.bias' and 1 more"),
    (lambda t: t.update(extra=torch.zeros(1)), "have 'extra', not in the model's state"),
    (lambda t: t.update({"fc2.weight": torch.zeros(4, 5)}), r"'fc2.weight' has shape \(4, 5\), the model's is \(4, 4\)"),
    (lambda t: t.update({"fc1.bias": torch.zeros(4, dtype=torch.int64)}), "'fc1.bias' has dtype torch.int64"),
    (lambda t: t.update({"fc1.bias": torch.full((4,), float("nan"))}), "'fc1.bias' contains NaN or Inf"),
])
def test_apply_refuses_mismatched_state_naming_the_key(edit, match):
    model = build_model(ModelSpec.of("mlp", {"hidden": 4}, (6,), 2), 1)
    tensors = _mlp_tensors()
    edit(tensors)

    with pytest.raises(ModelSpecError, match=match):
        apply_initial_weights(model, tensors)


def test_apply_casts_to_the_model_dtype():
    model = build_model(ModelSpec.of("mlp", {"hidden": 4}, (6,), 2), 1)
    tensors = {n: t.double() for n, t in _mlp_tensors().items()}

    apply_initial_weights(model, tensors)

    assert all(t.dtype == torch.float32 for t in model.state_dict().values())
    assert torch.equal(model.fc1.weight, tensors["fc1.weight"].float())


# --- the genesis's initial hash ----------------------------------------------------------------------------

def test_check_initial_hash():
    params = build_model("mlp", 0).state_dict()
    other = build_model("mlp", 1).state_dict()
    pinned = bytes.fromhex(BUILTIN_HASHES["mlp"])

    check_initial_hash(params, pinned)
    with pytest.raises(ModelMismatch, match=r"0x[0-9a-f]{16}\.\. differs from the genesis's 0x5e17c08e41f6bfd8\.\."
                                            r".*torch or torchvision version.*entry point.*weights file"):
        check_initial_hash(other, pinned)
