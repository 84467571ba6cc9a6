"""Model zoo and model specs: built-ins, torchvision architectures, entry points; pinned initial weights.

A genesis names its model as a `ModelSpec`. `spec.name` is one of

- a built-in: "federated-net", "small-cnn" or "mlp";
- "torchvision:<arch>", a torchvision classification architecture built with `weights=None` (never
  downloaded), e.g. "torchvision:resnet18"; `torchvision.models.list_models(module=torchvision.models)`
  lists the names;
- "entrypoint:<package.module>:<factory>", a callable in the local Python environment.

Built-ins and entry points are called as `factory(num_classes=..., input_shape=..., **args)`; torchvision
builders as `builder(weights=None, num_classes=..., **args)`. Each must return an `nn.Module` mapping a
batch `(B, *input_shape)` to logits `(B, num_classes)`. The class count and input shape come from the
dataset only, so `args` may not set them.

An entry point runs code from the operator's own Python environment, named in a genesis the operator chose
to join; nothing is fetched from the network. Its factory must draw randomness from torch's global RNG
only (which `build_model` seeds), or its initial weights will not be reproducible.

Initial weights are a pure function of (spec, seed) on one torch version. The genesis pins their hash
(`check_initial_hash`); or the weights come from a safetensors file the genesis pins by SHA-256
(`load_initial_weights`, `apply_initial_weights`, `save_initial_weights`).
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import importlib
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from eth_utils import keccak
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from swarmnode.aggregation.codec import GlobalModel, model_hash
from swarmnode.learning.errors import LearningError, UnknownName

MNIST_SHAPE = (1, 28, 28)
TORCHVISION = "torchvision:"
ENTRYPOINT = "entrypoint:"
RESERVED_ARGS = ("input_shape", "num_classes")  # from the dataset: one source of truth for both
TORCHVISION_RESERVED_ARGS = ("weights", "weights_backbone")  # initial weights are never downloaded
_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class ModelSpecError(LearningError):
    """A model spec, entry point or initial-weights file that cannot give the model the genesis names."""


class UnknownModel(ModelSpecError, UnknownName):
    """A built-in model name or torchvision architecture that does not exist."""


class ModelMismatch(ModelSpecError):
    """The initial model built here does not hash to the genesis's pinned initial model hash."""


def _image_shape(model: str, input_shape: tuple[int, ...], min_side: int) -> tuple[int, int, int]:
    if len(input_shape) != 3 or min(input_shape[1:]) < min_side:
        raise ModelSpecError(f"model {model!r} needs an input shape (C, H, W) with H, W >= {min_side}, "
                             f"got {input_shape}")
    c, h, w = input_shape
    return c, h, w


class FederatedNet(nn.Module):
    """The seed paper's CNN: the PyTorch MNIST example's shape, ~1.2M parameters on (1, 28, 28)."""

    def __init__(self, num_classes: int = 10, input_shape: tuple[int, ...] = MNIST_SHAPE) -> None:
        super().__init__()
        c, h, w = _image_shape("federated-net", input_shape, 6)
        self.conv1 = nn.Conv2d(c, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(64 * ((h - 4) // 2) * ((w - 4) // 2), 128)  # 9216 on 28 x 28
        self.fc2 = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, C, H, W), e.g. (B, 1, 28, 28)
        x = torch.relu(self.conv1(x))  # (B, 32, H-2, W-2)
        x = torch.relu(self.conv2(x))  # (B, 64, H-4, W-4)
        x = self.dropout1(torch.max_pool2d(x, 2))  # (B, 64, (H-4)/2, (W-4)/2)
        x = torch.relu(self.fc1(torch.flatten(x, 1)))  # (B, 128)
        return self.fc2(self.dropout2(x))  # (B, num_classes)


class SmallCNN(nn.Module):
    """Two narrow conv blocks and a wide hidden layer: ~207K parameters, ~2.2 MFLOP on (1, 28, 28).

    No batch norm: its running statistics break when each client sees mostly one class.
    """

    def __init__(self, num_classes: int = 10, input_shape: tuple[int, ...] = MNIST_SHAPE) -> None:
        super().__init__()
        c, h, w = _image_shape("small-cnn", input_shape, 4)
        self.conv1 = nn.Conv2d(c, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = nn.Linear(32 * (h // 4) * (w // 4), 128)  # 32 * 7 * 7 on 28 x 28
        self.fc2 = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, C, H, W), e.g. (B, 1, 28, 28)
        x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)  # (B, 16, H/2, W/2)
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)  # (B, 32, H/4, W/4)
        x = torch.relu(self.fc1(torch.flatten(x, 1)))  # (B, 128)
        return self.fc2(x)  # (B, num_classes)


class MLP(nn.Module):
    """F-200-200-C multilayer perceptron (McMahan et al. 2017's 2NN), ~199K parameters on (1, 28, 28).

    Any input shape: it is flattened to F features, so tabular rows (F,) work as well as images.
    """

    def __init__(self, num_classes: int = 10, input_shape: tuple[int, ...] = MNIST_SHAPE,
                 hidden: int = 200) -> None:
        super().__init__()
        if not isinstance(hidden, int) or isinstance(hidden, bool) or hidden < 1:
            raise ModelSpecError(f"model 'mlp' needs hidden >= 1, got {hidden!r}")
        self.fc1 = nn.Linear(math.prod(input_shape), hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, *input_shape)
        x = torch.relu(self.fc1(torch.flatten(x, 1)))  # (B, hidden)
        x = torch.relu(self.fc2(x))  # (B, hidden)
        return self.fc3(x)  # (B, num_classes)


class _BasicBlock(nn.Module):
    """Two 3x3 convolutions with a skip connection (He et al. 2016), group norm in place of batch norm."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.norm1 = nn.GroupNorm(min(32, c_out), c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.norm2 = nn.GroupNorm(min(32, c_out), c_out)
        self.skip = (nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.GroupNorm(min(32, c_out), c_out))
                     if stride != 1 or c_in != c_out else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.norm1(self.conv1(x)))
        return torch.relu(self.norm2(self.conv2(y)) + self.skip(x))


class ResNet(nn.Module):
    """ResNet-18's shape (4 stages of 2 basic blocks, widths w, 2w, 4w, 8w) for small images: a 3x3 stem
    without max pooling, and group norm, which has no running statistics to break on skewed clients.
    ~11.2M parameters with width 64 (the default) on (1, 28, 28): a 44.7 MB update, for measuring the swarm
    with large models."""

    def __init__(self, num_classes: int = 10, input_shape: tuple[int, ...] = MNIST_SHAPE, width: int = 64) -> None:
        super().__init__()
        if not isinstance(width, int) or isinstance(width, bool) or width < 1:
            raise ModelSpecError(f"model 'resnet' needs width >= 1, got {width!r}")
        c, _, _ = _image_shape("resnet", input_shape, 8)
        self.stem = nn.Sequential(nn.Conv2d(c, width, 3, 1, 1, bias=False), nn.GroupNorm(min(32, width), width),
                                  nn.ReLU())
        blocks, c_in = [], width
        for stage, c_out in enumerate((width, 2 * width, 4 * width, 8 * width)):
            blocks += [_BasicBlock(c_in, c_out, 1 if stage == 0 else 2), _BasicBlock(c_out, c_out, 1)]
            c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, C, H, W)
        x = self.blocks(self.stem(x))  # (B, 8w, H/8, W/8)
        return self.fc(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(x, 1), 1))  # (B, num_classes)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "federated-net": FederatedNet,
    "small-cnn": SmallCNN,
    "mlp": MLP,
    "resnet": ResNet,
}


def _freeze(value: Any, key: str) -> Any:
    """A TOML scalar or array as a hashable value: arrays become tuples."""
    if isinstance(value, list | tuple):
        return tuple(_freeze(v, key) for v in value)
    if isinstance(value, float) and not math.isfinite(value):
        raise ModelSpecError(f"model argument {key!r} is {value}; only finite numbers are allowed")
    if isinstance(value, bool | int | float | str):
        return value
    raise ModelSpecError(f"model argument {key!r} is a {type(value).__name__}; only strings, numbers, "
                         f"booleans and arrays of them are allowed")


def _thaw(value: Any) -> Any:
    return [_thaw(v) for v in value] if isinstance(value, tuple) else value


def _freeze_args(args: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    for key in args:
        if not isinstance(key, str) or not key.isidentifier():
            raise ModelSpecError(f"model argument name {key!r} is not a Python identifier")
        if key in RESERVED_ARGS:
            raise ModelSpecError(f"model argument {key!r} is set from the dataset, not from the model's args")
    return tuple(sorted((key, _freeze(value, key)) for key, value in args.items()))


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not name:
        raise ModelSpecError(f"model name must be a non-empty string, got {name!r}")
    if name.startswith(TORCHVISION):
        if not name[len(TORCHVISION) :].isidentifier():
            raise ModelSpecError(f"model {name!r}: expected 'torchvision:<architecture>', "
                                 f"e.g. 'torchvision:resnet18'")
    elif name.startswith(ENTRYPOINT):
        parts = name[len(ENTRYPOINT) :].split(":")
        if len(parts) != 2 or not all(_DOTTED.fullmatch(p) for p in parts):
            raise ModelSpecError(f"model {name!r}: expected 'entrypoint:<package.module>:<factory>'")
    elif name not in MODELS:
        raise UnknownModel(f"unknown model {name!r}; known: {', '.join(MODELS)}, "
                           f"'{TORCHVISION}<arch>' or '{ENTRYPOINT}<package.module>:<factory>'")


@dataclass(frozen=True)
class ModelSpec:
    """Which model to build and for what data: a name, its arguments and the dataset's shapes.

    `args` holds the sorted (key, value) pairs of a table of TOML scalars and arrays, arrays as tuples,
    so that a spec is hashable; build one from a dict with `ModelSpec.of`.
    """

    name: str
    args: tuple[tuple[str, Any], ...] = ()
    input_shape: tuple[int, ...] = MNIST_SHAPE  # of one sample: (C, H, W) for images, (F,) for tabular rows
    num_classes: int = 10

    def __post_init__(self) -> None:
        _check_name(self.name)
        pairs = tuple(self.args.items()) if isinstance(self.args, Mapping) else tuple(self.args)
        if len({key for key, _ in pairs}) != len(pairs):
            raise ModelSpecError(f"model {self.name!r} has a repeated argument in {pairs}")
        object.__setattr__(self, "args", _freeze_args(dict(pairs)))
        shape = tuple(self.input_shape)
        if not shape or any(not isinstance(d, int) or isinstance(d, bool) or d < 1 for d in shape):
            raise ModelSpecError(f"input shape must be a non-empty tuple of positive ints, "
                                 f"got {self.input_shape!r}")
        object.__setattr__(self, "input_shape", shape)
        n = self.num_classes
        if not isinstance(n, int) or isinstance(n, bool) or n < 2:
            raise ModelSpecError(f"num_classes must be an int >= 2, got {n!r}")

    @classmethod
    def of(cls, name: str, args: Mapping[str, Any] | None = None, input_shape: tuple[int, ...] = MNIST_SHAPE,
           num_classes: int = 10) -> ModelSpec:
        return cls(name, _freeze_args(args or {}), tuple(input_shape), num_classes)

    def kwargs(self) -> dict[str, Any]:
        """The arguments as a dict, arrays as lists: what the factory receives and a TOML table holds."""
        return {key: _thaw(value) for key, value in self.args}


def init_seed(name: str, seed: int) -> int:
    """The torch seed for model `name` under task seed `seed`: a pure function of both."""
    return int.from_bytes(keccak(f"swarmnode-init:{name}:{seed}".encode())[:8], "little") & ((1 << 63) - 1)


def _torchvision_builder(spec: ModelSpec) -> tuple[Callable[..., Any], dict[str, Any]]:
    import torchvision.models

    arch = spec.name[len(TORCHVISION) :]
    known = torchvision.models.list_models(module=torchvision.models)  # classification models only
    if arch not in known:
        close = difflib.get_close_matches(arch, known, n=3)
        raise UnknownModel(f"unknown torchvision classification architecture {arch!r}"
                           + (f" (did you mean {', '.join(close)}?)" if close else "")
                           + "; list them with torchvision.models.list_models(module=torchvision.models)")
    for key in TORCHVISION_RESERVED_ARGS:
        if key in spec.kwargs():
            raise ModelSpecError(f"model {spec.name!r}: argument {key!r} is not allowed; initial weights "
                                 f"come from the task seed or a pinned safetensors file, never a download")
    return torchvision.models.get_model_builder(arch), {"weights": None, "num_classes": spec.num_classes}


def _entrypoint_factory(spec: ModelSpec) -> Callable[..., Any]:
    module_name, attr_path = spec.name[len(ENTRYPOINT) :].split(":")
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as exc:  # an ImportError or whatever the module raises while it runs
        raise ModelSpecError(f"entry point {spec.name!r}: cannot import {module_name!r}: "
                             f"{type(exc).__name__}: {exc}") from exc
    for attr in attr_path.split("."):
        try:
            target = getattr(target, attr)
        except AttributeError:
            raise ModelSpecError(f"entry point {spec.name!r}: {module_name!r} has no attribute "
                                 f"{attr_path!r}") from None
    if not callable(target):
        raise ModelSpecError(f"entry point {spec.name!r}: {attr_path!r} is a {type(target).__name__}, "
                             f"not callable")
    return target


def _factory(spec: ModelSpec) -> tuple[Callable[..., Any], dict[str, Any]]:
    """The callable that builds `spec`'s model and the keyword arguments it takes besides spec.args."""
    if spec.name.startswith(TORCHVISION):
        return _torchvision_builder(spec)
    shapes = {"num_classes": spec.num_classes, "input_shape": spec.input_shape}
    if spec.name.startswith(ENTRYPOINT):
        return _entrypoint_factory(spec), shapes
    return MODELS[spec.name], shapes


def build_model(model: str | ModelSpec, seed: int) -> nn.Module:
    """A fresh model whose initial weights depend only on (spec, seed), never on global RNG state.

    `model` is a spec or a bare name, which means the spec with the default MNIST shapes.
    """
    spec = model if isinstance(model, ModelSpec) else ModelSpec(model)
    with torch.random.fork_rng(devices=[]):
        # resolved before seeding: a module that draws random numbers when first imported must not make
        # the first build differ from later ones
        factory, fixed = _factory(spec)
        torch.manual_seed(init_seed(spec.name, seed))
        try:
            module = factory(**fixed, **spec.kwargs())
        except ModelSpecError:
            raise
        except Exception as exc:  # a bad argument or a failing factory is a configuration error
            raise ModelSpecError(f"model {spec.name!r} with args {spec.kwargs()} failed to build: "
                                 f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(module, nn.Module):
        raise ModelSpecError(f"model {spec.name!r} returned a {type(module).__name__}, not a torch.nn.Module")
    return module


def check_forward(model: nn.Module, spec: ModelSpec) -> None:
    """Run a zero batch through a copy of `model` in eval mode: the logits must be (2, num_classes)."""
    probe = copy.deepcopy(model).eval()
    try:
        with torch.inference_mode():
            out = probe(torch.zeros(2, *spec.input_shape))  # (2, *input_shape)
    except Exception as exc:
        raise ModelSpecError(f"model {spec.name!r} fails on a batch of shape {(2, *spec.input_shape)}: "
                             f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, spec.num_classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelSpecError(f"model {spec.name!r} maps a batch of 2 to {got}, "
                             f"expected logits (2, {spec.num_classes})")


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def check_initial_hash(params: Mapping[str, torch.Tensor], expected: bytes) -> None:
    """Refuse initial parameters whose canonical model hash is not the genesis's `expected` one."""
    actual = model_hash(GlobalModel(dict(params)))
    if actual != expected:
        raise ModelMismatch(
            f"initial model 0x{actual.hex()[:16]}.. differs from the genesis's 0x{expected.hex()[:16]}..: "
            f"this node built different initial weights (another torch or torchvision version, different "
            f"entry point code or initial weights file than the genesis author's)"
        )


def _sha256_hex(expected: str) -> str:
    normal = expected.lower().removeprefix("0x")
    if not _SHA256_HEX.fullmatch(normal):
        raise ModelSpecError(f"pinned SHA-256 {expected!r} is not 64 hex digits")
    return normal


def load_initial_weights(path: Path, expected_sha256: str | None) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, after checking its SHA-256 (hex) against the pinned one.

    The bytes hashed are the bytes parsed. Pass `expected_sha256=None` only for a file this node made.
    """
    expected = None if expected_sha256 is None else _sha256_hex(expected_sha256)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ModelSpecError(f"cannot read initial weights {str(path)!r}: {exc}") from None
    actual = hashlib.sha256(raw).hexdigest()
    if expected is not None and actual != expected:
        raise ModelSpecError(f"initial weights {str(path)!r} have SHA-256 {actual}, "
                             f"the genesis pins {expected}")
    try:
        return st_load(raw)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise ModelSpecError(f"initial weights {str(path)!r} are not a valid safetensors file: "
                             f"{exc}") from None


def _more(names: list[str]) -> str:
    return f" and {len(names) - 1} more" if len(names) > 1 else ""


def apply_initial_weights(model: nn.Module, tensors: Mapping[str, torch.Tensor]) -> None:
    """Load `tensors` into `model`: names and shapes must match its state exactly; dtypes are cast to it."""
    state = model.state_dict()
    missing, extra = sorted(set(state) - set(tensors)), sorted(set(tensors) - set(state))
    if missing:
        raise ModelSpecError(f"initial weights lack {missing[0]!r}{_more(missing)} of the model's state")
    if extra:
        raise ModelSpecError(f"initial weights have {extra[0]!r}{_more(extra)}, not in the model's state")
    cast: dict[str, torch.Tensor] = {}
    for name in sorted(state):
        want, got = state[name], tensors[name]
        if tuple(got.shape) != tuple(want.shape):
            raise ModelSpecError(f"initial weight {name!r} has shape {tuple(got.shape)}, "
                                 f"the model's is {tuple(want.shape)}")
        if want.is_floating_point() != got.is_floating_point():
            raise ModelSpecError(f"initial weight {name!r} has dtype {got.dtype}, "
                                 f"the model's is {want.dtype}")
        if got.is_floating_point() and not bool(torch.isfinite(got).all()):
            raise ModelSpecError(f"initial weight {name!r} contains NaN or Inf")
        cast[name] = got.to(want.dtype)
    model.load_state_dict(cast, strict=True)


def save_initial_weights(model: nn.Module | Mapping[str, torch.Tensor], path: Path) -> str:
    """Write a model's state (or a name -> tensor mapping) as a safetensors file; returns its SHA-256 hex."""
    state = model.state_dict() if isinstance(model, nn.Module) else model
    # cloned: safetensors refuses tensors that share storage (tied weights, views of one buffer)
    tensors = {name: t.detach().cpu().contiguous().clone() for name, t in sorted(state.items())}
    raw = st_save(tensors, metadata={"format": "swarmnode-initial-weights-v1"})
    Path(path).write_bytes(raw)
    return hashlib.sha256(raw).hexdigest()
