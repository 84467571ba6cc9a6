"""Churn over 60 rounds, with real daemons started through the CLI (4 validators, tiny task):

- kill -9 of a random validator every few rounds (never two at once: 3 of 4 keep the quorum), restarted
  two rounds later;
- a wallet (web3.py) sends a transfer from node1's account with the nonce of node1's pending commit and a
  higher fee, replacing it in the pool: node1 must still commit in that round;
- a new participant (fresh key, funded by that transfer) registers mid-run with `swarmnode register`
  (stake admission) and takes part;
- it later leaves with `swarmnode leave`, and rounds stop waiting for it.
In every case: no finalized round is lost, every node agrees with the chain's model hash for every round,
no validator signs twice (no stake is slashed, no equivocation evidence), and no log holds an unhandled
exception. Rounds with a validator down must not wait for the whole commit window.
"""

from __future__ import annotations

import json
import os
import random
import re
import time
from pathlib import Path

import pytest

from swarmnode.node.keys import address_of, load_key
from swarmnode.node.localnet import LocalSwarm, make_genesis, run_cli, wait_for
from swarmnode.node.soak import bad_log_lines

pytestmark = [pytest.mark.slow, pytest.mark.long]  # make soak, not make test

ROUNDS = 60
COMMIT_WINDOW_S = 60
ROUND_TIMEOUT = 120.0
SEED = 1313


def _addr(swarm: LocalSwarm, i: int) -> str:
    return "0x" + address_of(load_key(swarm.nodes[i].data_dir / "node.key")).hex()


def _round(swarm: LocalSwarm, i: int, r: int) -> dict | None:
    return swarm.try_rpc(i, "swarm_getRound", r)


def _wait_final(swarm: LocalSwarm, r: int, via: int = 0) -> dict:
    def final() -> dict | None:
        info = _round(swarm, via, r)
        return info if info and info["finalized"] else None

    return wait_for(final, ROUND_TIMEOUT, f"round {r} to finalize on node{via}\n{swarm.tail(via)}", interval=0.2)


def _current(swarm: LocalSwarm, via: int = 0) -> int:
    return max(swarm.final_hashes(via) or {-1: ""}) + 1


def _wallet_replaces_pending_commit(swarm: LocalSwarm, who: int, to: str) -> tuple[int, str]:
    """Wait until node `who` has a transaction pending, then send a transfer from its account at that nonce
    with a higher fee (a wallet that reads the 'latest' nonce): it replaces the node's transaction."""
    from eth_account import Account
    from web3 import HTTPProvider, Web3

    w3 = Web3(HTTPProvider(swarm.nodes[who].rpc_url))
    me = Web3.to_checksum_address(_addr(swarm, who))
    secret = load_key(swarm.nodes[who].data_dir / "node.key")

    def pending_nonce() -> int | None:
        latest = w3.eth.get_transaction_count(me, "latest")
        return latest + 1 if w3.eth.get_transaction_count(me, "pending") > latest else None

    for _attempt in range(8):
        nonce = wait_for(pending_nonce, ROUND_TIMEOUT, f"node{who} to have a transaction pending", interval=0.02) - 1
        r = _current(swarm, who)
        tx = {"chainId": w3.eth.chain_id, "nonce": nonce, "to": Web3.to_checksum_address(to), "value": 10 * 10**18,
              "gas": 21_000, "maxFeePerGas": 50 * 10**9, "maxPriorityFeePerGas": 2 * 10**9}
        signed = Account.sign_transaction(tx, secret)
        try:
            sent = w3.eth.send_raw_transaction(signed.raw_transaction)
        except Exception:  # noqa: BLE001 - the node's transaction was included meanwhile: nonce too low
            continue

        def settled(sent=sent, nonce=nonce) -> str | None:  # noqa: ANN001
            if w3.eth.get_transaction_count(me, "latest") <= nonce:
                return None  # the nonce is still free: pending
            try:
                return "included" if w3.eth.get_transaction_receipt(sent) else "lost"
            except Exception:  # noqa: BLE001 - not found: the node's own transaction used the nonce
                return "lost"

        if wait_for(settled, ROUND_TIMEOUT, "the wallet's nonce to be used") == "included":
            return r, sent.hex()
        # the node's commit reached a proposer before the wallet's replacement did: try again next time
    raise AssertionError("the wallet's transaction lost the race to the node's own eight times")


def test_sixty_rounds_of_churn(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    genesis, keys = make_genesis(tmp_path, 4, "tiny", commit_window_s=COMMIT_WINDOW_S)
    text = genesis.read_text()
    genesis.write_text(re.sub(r"(?m)^num_clients = \d+$", "num_clients = 6", text))  # room for a newcomer
    env = {"OMP_NUM_THREADS": "1", "SWARMNODE_DATA": os.environ.get("SWARMNODE_DATA", "/usr/share/datasets/fashion-mnist")}
    with LocalSwarm(tmp_path, genesis, keys, extra_env=env) as swarm:
        for i in range(4):
            swarm.init_node(i)
        swarm.start_all([0, 1, 2, 3])
        swarm.init_node(4, fresh_key=True)  # the newcomer: a key of its own, no funds yet
        newcomer = _addr(swarm, 4)
        down: int | None = None
        down_since = 0
        next_kill = 4

        def event(text: str) -> None:  # printed at once: a failure's output shows what happened before it
            print(time.strftime("%H:%M:%S"), text, flush=True)

        wallet_round = None
        registered_round = None
        left_round = None
        round_times: dict[int, float] = {}
        last = time.monotonic()
        for r in range(ROUNDS):
            via = next(i for i in range(4) if i != down)
            _wait_final(swarm, r, via)
            now = time.monotonic()
            round_times[r] = now - last
            last = now
            fresh = None  # a node restarted just now: its RPC may not answer yet
            if down is not None and r >= down_since + 2:
                swarm.start(down)
                event(f"r{r}: restarted node{down}")
                down, fresh = None, down
            elif down is None and r >= next_kill and r < ROUNDS - 6:
                down, down_since = rng.randrange(4), r
                swarm.kill(down)
                event(f"r{r}: kill -9 node{down}")
                next_kill = r + rng.randint(5, 7)
            via = next(i for i in range(4) if i not in (down, fresh))
            # with every validator up and caught up: a proposer down or catching up can delay the next block
            # past the straggler grace, and then no re-send is in time (a known limit, README "Known gaps")
            if wallet_round is None and r >= 6 and down is None and fresh is None:
                wallet_round, tx = _wallet_replaces_pending_commit(swarm, 1, newcomer)
                event(f"r{r}: wallet tx {tx} from node1 in round {wallet_round}")
            if r == 10:
                swarm.start(4)
                out = run_cli("register", "--config", str(swarm.nodes[4].config), "--rpc",
                              str(swarm.nodes[via].rpc_url), "--json")
                registered_round = _current(swarm, via)
                event(f"r{r}: registered node4 ({json.loads(out.stdout)['participant']['index']})")
            if r == 40 and registered_round is not None:
                run_cli("leave", "--config", str(swarm.nodes[4].config), "--rpc", str(swarm.nodes[via].rpc_url),
                        "--json")
                left_round = _current(swarm, via)
                event(f"r{r}: node4 left")
        if down is not None:
            swarm.start(down)
        print("round seconds:", {r: round(s, 1) for r, s in round_times.items()})

        # no finalized round lost, and one chain history on every node
        reference = swarm.final_hashes(0)
        assert sorted(reference)[:ROUNDS] == list(range(ROUNDS)), "a round is missing from node0's history"
        for i in range(1, 5):
            theirs = wait_for(lambda i=i: (h := swarm.final_hashes(i)) and len(h) >= ROUNDS and h, ROUND_TIMEOUT,
                              f"node{i} to hold {ROUNDS} final rounds\n{swarm.tail(i)}")
            assert all(theirs[q] == reference[q] for q in range(ROUNDS)), f"node{i}'s chain disagrees"

        # the wallet's transaction did not cost node1 its round
        assert wallet_round is not None
        committed = {c["participant"].lower() for c in _round(swarm, 0, wallet_round)["commits"]}
        assert _addr(swarm, 1) in committed, f"node1 lost round {wallet_round} to the wallet's transaction"

        # the newcomer took part after registering, and was not waited for after leaving
        assert registered_round is not None and left_round is not None
        joined = [q for q in range(registered_round, left_round)
                  if newcomer in {c["participant"].lower() for c in _round(swarm, 0, q)["commits"]}]
        assert joined, "the newcomer never committed an update"
        listed = json.loads(run_cli("chain", "participants", "--json", "--rpc", str(swarm.nodes[0].rpc_url)).stdout)
        participants = listed["participants"]
        mine = next(p for p in participants if p["address"].lower() == newcomer)
        assert not mine["active"] and int(mine["bond"]) == 0, mine
        assert all(p["peerIdMatches"] for p in participants), "every daemon registered its own peer id"
        after = [_round(swarm, 0, q) for q in range(left_round + 1, ROUNDS)]
        assert all(int(a["expectedCount"]) <= 4 for a in after)

        # absent participants were recorded; rounds with a validator down did not wait out the window
        assert any(int(_round(swarm, 0, q)["absentCount"]) > 0 for q in range(ROUNDS)), "no absence recorded"
        assert max(round_times.values()) < COMMIT_WINDOW_S * 0.75, round_times

        # nobody signed twice: no stake slashed, no evidence; no node agreed with a wrong model
        stakes = {v["address"].lower(): int(v["stake"]) for v in swarm.rpc(0, "swarm_validators")}
        assert all(s == 32 * 10**18 for s in stakes.values()), f"a validator was slashed: {stakes}"
        swarm.close()
        for i in range(5):
            log = swarm.nodes[i].log_path.read_text(errors="replace")
            assert not bad_log_lines(log), f"node{i}: {bad_log_lines(log)}"
            assert "evidence of equivocation" not in log, f"node{i} saw a double vote"
