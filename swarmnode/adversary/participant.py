"""A Byzantine participant inside a real daemon: `swarmnode run --byzantine NAME[:KEY=VALUE,...]`.

For tests and benchmarks only. The daemon trains as usual, then plays one attack of
`swarmnode.adversary.attacks` on the protocol: it commits the attack's hash with the attack's sample
count and serves the attack's bytes (or nothing). Everything else it does honestly (consensus,
attestations, serving other blobs), so what is measured is the damage one participant's updates do.

Attacks that need the round's honest deltas (alie, ipm, min-max) or another participant's blob
(replay-peer) need knowledge a daemon does not have at commit time; they run in the in-process table
(`scripts/bench_attacks.py`) and are refused here with a clear error.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import deque
from dataclasses import dataclass, field

from swarmnode.adversary.attacks import Attack, AttackError, RoundContext, Submission, make_attack
from swarmnode.experiment import LocalUpdate
from swarmnode.learning.data import Split

log = logging.getLogger("swarmnode.node")

DAEMON_UNSUPPORTED = ("replay-peer",)  # plus every omniscient attack
HISTORY = 64  # own blobs kept for replay-old (bounded: a node runs for weeks)


def parse_spec(spec: str) -> Attack:
    """"scaling:factor=-10,..." -> the attack; AttackError names what is wrong."""
    name, _, rest = spec.strip().partition(":")
    params: dict[str, float | int] = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise AttackError(f"--byzantine parameter {item!r} is not KEY=VALUE")
        try:
            params[key] = int(value)
        except ValueError:
            try:
                params[key] = float(value)
            except ValueError:
                raise AttackError(f"--byzantine parameter {key} wants a number, got {value!r}") from None
    attack = make_attack(name, **params)
    if attack.changes.omniscient or attack.name in DAEMON_UNSUPPORTED:
        raise AttackError(f"attack {attack.name!r} needs the round's other updates at commit time; a daemon "
                          f"cannot play it (it runs in scripts/bench_attacks.py)")
    return attack


@dataclass
class ByzantineParticipant:
    """One attack played by this daemon, round after round."""

    attack: Attack
    seed: int = 0
    history: deque[bytes] = field(default_factory=lambda: deque(maxlen=HISTORY))
    rounds_played: int = 0

    @classmethod
    def from_spec(cls, spec: str, seed: int = 0) -> ByzantineParticipant:
        return cls(parse_spec(spec), seed)

    def training_data(self, data: Split) -> Split:
        """The data it trains on (label flipping changes it; every other attack trains honestly)."""
        if self.attack.label_map is None:
            return data
        return dataclasses.replace(data, labels=self.attack.labels(data.labels))

    def submit(self, round_: int, client_index: int, upd: LocalUpdate) -> Submission:
        """What it commits and serves this round, from its honest training result."""
        ctx = RoundContext(round=round_, index=client_index, own=upd.result.delta, own_blob=upd.blob,
                           num_samples=upd.result.num_samples, history=tuple(self.history), seed=self.seed)
        sub = self.attack.craft(ctx)
        if sub.served is not None and sub.available():
            self.history.append(sub.served)
        self.rounds_played += 1
        log.warning("event=byzantine attack=%s round=%d committed=0x%s samples=%d served=%s", self.attack.name,
                    round_, sub.committed_hash.hex()[:16], sub.num_samples,
                    "nothing" if sub.served is None else "matching" if sub.available() else "other bytes")
        return sub
