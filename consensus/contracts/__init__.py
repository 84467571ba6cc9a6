"""The swarm's Vyper contracts: fixed addresses, committed artifacts, and recompilation from source.

`Staking` and `SwarmRounds` live at fixed addresses placed in the genesis state
(see consensus.genesis_state). Their compiled artifacts (abi, bytecode, bytecode_runtime, storage
layout) are committed next to the sources as JSON; `compile_source` rebuilds them with vyper, which is
a dev dependency only, so nodes never need the compiler at run time.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from consensus.errors import ConsensusError

CONTRACTS_DIR = Path(__file__).resolve().parent
CONTRACT_NAMES = ("Staking", "SwarmRounds")

STAKING_ADDRESS = bytes.fromhex("0000000000000000000000000000000000001000")
SWARM_ROUNDS_ADDRESS = bytes.fromhex("0000000000000000000000000000000000001001")
CONTRACT_ADDRESSES = {"Staking": STAKING_ADDRESS, "SwarmRounds": SWARM_ROUNDS_ADDRESS}

_OUTPUT_FORMATS = ["abi", "bytecode", "bytecode_runtime", "layout", "method_identifiers"]


class ContractArtifactError(ConsensusError):
    """A contract name is unknown, or its artifact is missing or malformed."""


def _check_name(name: str) -> None:
    if name not in CONTRACT_NAMES:
        raise ContractArtifactError(f"unknown contract {name!r}; expected one of {CONTRACT_NAMES}")


def source_path(name: str) -> Path:
    _check_name(name)
    return CONTRACTS_DIR / f"{name}.vy"


def artifact_path(name: str) -> Path:
    _check_name(name)
    return CONTRACTS_DIR / f"{name}.json"


def load_artifact(name: str) -> dict[str, Any]:
    """The committed artifact of contract `name`: abi, bytecode, bytecode_runtime, layout, ..."""
    path = artifact_path(name)
    try:
        artifact = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ContractArtifactError(f"artifact for {name} missing at {path}; run scripts/compile_contracts.py") from exc
    except json.JSONDecodeError as exc:
        raise ContractArtifactError(f"artifact {path} is not valid JSON: {exc}") from exc
    missing = {"abi", "bytecode", "bytecode_runtime"} - set(artifact)
    if missing:
        raise ContractArtifactError(f"artifact {path} lacks {sorted(missing)}")
    return artifact


def compile_source(name: str) -> dict[str, Any]:
    """Compile `name`.vy with the installed vyper into the artifact dict that gets committed."""
    import vyper  # dev dependency: imported lazily so nodes run without the compiler

    out = vyper.compile_code(source_path(name).read_text(), output_formats=_OUTPUT_FORMATS)
    return {
        "contract_name": name,
        "compiler": f"vyper {vyper.__version__}",
        "abi": out["abi"],
        "bytecode": out["bytecode"],
        "bytecode_runtime": out["bytecode_runtime"],
        "layout": out["layout"],
        "method_identifiers": out["method_identifiers"],
    }


def artifact_json(artifact: dict[str, Any]) -> str:
    """The canonical text of an artifact file (sorted keys, stable indentation, trailing newline)."""
    return json.dumps(artifact, indent=2, sort_keys=True) + "\n"


def code_bytes(artifact: dict[str, Any], key: str = "bytecode") -> bytes:
    """Hex bytecode from an artifact as bytes (`key` is "bytecode" or "bytecode_runtime")."""
    text = artifact[key]
    return bytes.fromhex(text[2:] if text.startswith("0x") else text)
