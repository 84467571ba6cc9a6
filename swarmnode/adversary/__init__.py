"""Byzantine participants for robustness studies: what a hostile node can put on the wire.

`attacks` holds pure functions (malicious deltas, malformed bytes, label transforms) and a registry of
named attacks usable from the in-process simulation (`swarmnode.experiment.Swarm`) and from a daemon.
"""

from swarmnode.adversary.attacks import (
    ATTACKS,
    Adversary,
    Attack,
    Changes,
    RoundContext,
    Submission,
    make_attack,
)

__all__ = ["ATTACKS", "Adversary", "Attack", "Changes", "RoundContext", "Submission", "make_attack"]
