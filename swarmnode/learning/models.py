"""Model zoo: federated-net (the seed's CNN), a small CNN and an MLP, with deterministic initial weights."""

from __future__ import annotations

from collections.abc import Callable

import torch
from eth_utils import keccak
from torch import nn

from swarmnode.learning.errors import UnknownName


class FederatedNet(nn.Module):
    """The seed paper's CNN: the PyTorch MNIST example's shape, ~1.2M parameters."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, 1, 28, 28)
        x = torch.relu(self.conv1(x))  # (B, 32, 26, 26)
        x = torch.relu(self.conv2(x))  # (B, 64, 24, 24)
        x = self.dropout1(torch.max_pool2d(x, 2))  # (B, 64, 12, 12)
        x = torch.relu(self.fc1(torch.flatten(x, 1)))  # (B, 128)
        return self.fc2(self.dropout2(x))  # (B, num_classes)


class SmallCNN(nn.Module):
    """Two narrow conv blocks and a wide hidden layer: ~207K parameters, ~2.2 MFLOP per image.

    No batch norm: its running statistics break when each client sees mostly one class.
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = nn.Linear(32 * 7 * 7, 128)
        self.fc2 = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, 1, 28, 28)
        x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)  # (B, 16, 14, 14)
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)  # (B, 32, 7, 7)
        x = torch.relu(self.fc1(torch.flatten(x, 1)))  # (B, 128)
        return self.fc2(x)  # (B, num_classes)


class MLP(nn.Module):
    """784-200-200-C multilayer perceptron (McMahan et al. 2017's 2NN), ~199K parameters."""

    def __init__(self, num_classes: int = 10, hidden: int = 200) -> None:
        super().__init__()
        self.fc1 = nn.Linear(28 * 28, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, 1, 28, 28)
        x = torch.relu(self.fc1(torch.flatten(x, 1)))  # (B, hidden)
        x = torch.relu(self.fc2(x))  # (B, hidden)
        return self.fc3(x)  # (B, num_classes)


MODELS: dict[str, Callable[[], nn.Module]] = {
    "federated-net": FederatedNet,
    "small-cnn": SmallCNN,
    "mlp": MLP,
}


def init_seed(name: str, seed: int) -> int:
    """The torch seed for model `name` under task seed `seed`: a pure function of both."""
    return int.from_bytes(keccak(f"swarmnode-init:{name}:{seed}".encode())[:8], "little") & ((1 << 63) - 1)


def build_model(name: str, seed: int) -> nn.Module:
    """A fresh model whose initial weights depend only on (name, seed), never on global RNG state."""
    try:
        factory = MODELS[name]
    except KeyError:
        raise UnknownName(f"unknown model {name!r}; known: {', '.join(MODELS)}") from None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed(name, seed))
        model = factory()
    return model


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
