"""Development helpers: deterministic INSECURE dev keys, transaction signing, small genesis files.

DEV KEYS ARE PUBLIC: secret_i = keccak256(b"swarmnode-dev-key-" + str(i).encode()). Anyone can derive
them. They exist so the shipped demo genesis files can be regenerated with their keys; never hold value
with them. Used by `swarmnode genesis new --dev-keys`, the tests and the benchmarks.
"""

from __future__ import annotations

from typing import Any

from eth_account import Account
from eth_keys import keys
from eth_utils import keccak, to_checksum_address

from consensus.genesis import AccountSpec, Genesis, RoundsParams, ValidatorSpec

DEV_KEY_PREFIX = b"swarmnode-dev-key-"
# Dev chains admit participants without a bond, so a test registers with a plain call (no value).
DEV_ROUNDS = RoundsParams(participant_bond=0)


def dev_key(i: int) -> bytes:
    """The i-th INSECURE development secret (32 bytes)."""
    return keccak(DEV_KEY_PREFIX + str(i).encode())


def address_of(secret: bytes) -> bytes:
    return keys.PrivateKey(secret).public_key.to_canonical_address()


def sign_tx(secret: bytes, chain_id: int, nonce: int, *, to: bytes | None, value: int = 0, data: bytes = b"",
            gas: int = 21_000, max_fee: int = 2 * 10**9, tip: int = 1, legacy: bool = False) -> bytes:
    """A signed raw transaction (EIP-1559 unless legacy; to=None creates a contract)."""
    fields: dict[str, Any] = {"chainId": chain_id, "nonce": nonce, "gas": gas, "value": value, "data": data,
                              "to": to_checksum_address(to) if to else ""}
    if legacy:
        fields["gasPrice"] = max_fee
    else:
        fields.update(maxFeePerGas=max_fee, maxPriorityFeePerGas=tip)
    if not to:
        del fields["to"]
    return bytes(Account.sign_transaction(fields, secret).raw_transaction)


def dev_genesis(n_validators: int = 1, n_accounts: int = 4, *, chain_id: int = 7331, genesis_time: int = 1_000,
                balance: int = 10**24, stake: int = 32 * 10**18, rounds: RoundsParams = DEV_ROUNDS,
                genesis_model_hash: bytes = b"\x00" * 32) -> Genesis:
    """Validators are dev keys 0..n-1; accounts are dev keys 0..max(n_validators, n_accounts)-1.

    `rounds` defaults to DEV_ROUNDS (no participant bond); a `rounds` with under_min = "skip" needs a
    non-zero `genesis_model_hash`."""
    validators = tuple(ValidatorSpec(address_of(dev_key(i)), stake) for i in range(n_validators))
    accounts = tuple(AccountSpec(address_of(dev_key(i)), balance) for i in range(max(n_validators, n_accounts)))
    return Genesis(chain_id=chain_id, validators=validators, accounts=accounts, genesis_time=genesis_time,
                   rounds=rounds, genesis_model_hash=genesis_model_hash)
