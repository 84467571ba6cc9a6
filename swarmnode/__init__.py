"""swarmnode: a peer-to-peer swarm-learning node daemon."""

import consensus as _consensus  # noqa: F401  (selects the fast keccak backend before anything hashes)
