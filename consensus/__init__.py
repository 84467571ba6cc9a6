"""The chain: py-evm execution, the BFT engine and driver, the transaction pool, genesis and RPC."""

import os as _os

# eth-hash takes pycryptodome before pysha3 when both are installed, and pycryptodome's keccak costs
# ~60 us per call against ~12 us for safe-pysha3's C one. py-evm hashes every trie key and node, so
# block execution and contract reads spend a large share of their time here. The choice is made at the
# first hash, so it must be set before anything hashes; an explicit ETH_HASH_BACKEND still wins.
try:
    import sha3 as _sha3  # noqa: F401  (safe-pysha3)
except ImportError:
    pass
else:
    _os.environ.setdefault("ETH_HASH_BACKEND", "pysha3")

# pyrlp's decoder is recursive and quadratic in a list's width; every decoder in the process gets the
# linear, iterative one (see consensus.rlp_guard). Bytes from peers are also bounded before decoding.
from consensus import rlp_guard as _rlp_guard  # noqa: E402

_rlp_guard.install()
