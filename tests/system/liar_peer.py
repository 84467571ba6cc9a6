"""A malicious peer for the system test: it joins a running swarm, claims to hold every update and model
the chain mentions, and answers every blob request with a real but *wrong* model (a recent final model).

    python tests/system/liar_peer.py --rpc http://127.0.0.1:PORT --bootstrap /ip4/.../p2p/... --report FILE

It claims each blob twice over: it echoes every announcement it hears on the updates topic at once (so
peers list it among the providers before they fetch), and announces what the chain's recent rounds
mention. It writes {"served_wrong": N, "announced": M} to FILE after every change, and runs until SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import urllib.request
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from swarmnode.p2p import UPDATES, Announcement, P2PConfig, P2PNode  # noqa: E402
from swarmnode.p2p.blobstore import BlobStore  # noqa: E402


def rpc(url: str, method: str, *params: Any) -> Any:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}).encode()
    req = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())["result"]


class LyingStore(BlobStore):
    """Claims every blob; serves `wrong` for all of them."""

    def __init__(self, report: Path) -> None:
        self.wrong: bytes | None = None
        self.served_wrong = 0
        self.announced = 0
        self.report = report
        self._report_lock = threading.Lock()

    def has(self, cid: bytes) -> bool:
        return True

    def get(self, cid: bytes) -> bytes | None:
        if self.wrong is None:
            return None
        self.served_wrong += 1
        self.write_report()
        return self.wrong

    def put_verified(self, cid: bytes, blob: bytes) -> None:
        self.wrong = self.wrong or blob

    def write_report(self) -> None:
        # get() runs in worker threads, several at once when peers ask together: one writer at a time
        with self._report_lock:
            tmp = self.report.with_suffix(".tmp")
            tmp.write_text(json.dumps({"served_wrong": self.served_wrong, "announced": self.announced}))
            os.replace(tmp, self.report)


async def main(args: argparse.Namespace) -> None:
    chain_id = int(await trio.to_thread.run_sync(rpc, args.rpc, "eth_chainId"), 16)
    genesis = await trio.to_thread.run_sync(rpc, args.rpc, "eth_getBlockByNumber", "0x0", False)
    store = LyingStore(args.report)
    cfg = P2PConfig(secret=os.urandom(32), chain_id=chain_id, genesis_hash=bytes.fromhex(genesis["hash"][2:]),
                    bootstrap=(args.bootstrap,))
    node = P2PNode(cfg, store=store)
    async with node.run():
        with trio.fail_after(60):
            await node.host.wait_peers(1)
        # the wrong model it will serve: a real one, fetched honestly (the newest final one: nodes delete
        # final models older than keep_model_rounds)
        history = await trio.to_thread.run_sync(rpc, args.rpc, "swarm_roundHistory")
        newest = [r for r in history if r["finalized"]][-1]["finalHash"]
        honest = [p.peer_id for p in node.peers()]
        with trio.fail_after(60):
            store.wrong = await node.blobs.fetch(bytes.fromhex(newest[2:]), providers=honest)
        store.write_report()
        claimed: set[str] = set()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(echo_announcements, node, store, claimed)
            await poll_chain(args, node, store, claimed)


async def echo_announcements(node: P2PNode, store: LyingStore, claimed: set[str]) -> None:
    """Claim every blob a peer announces, at once: peers then see us among its providers when they fetch."""
    assert store.wrong is not None
    async for msg in node.gossip.channel(UPDATES):
        ann = msg.body
        await node.gossip.publish(UPDATES, Announcement(ann.round, ann.content_id, len(store.wrong)))
        if "0x" + ann.content_id.hex() not in claimed:
            claimed.add("0x" + ann.content_id.hex())
            store.announced += 1
            store.write_report()


async def poll_chain(args: argparse.Namespace, node: P2PNode, store: LyingStore, claimed: set[str]) -> None:
    """Claim what the chain mentions (updates and final models of recent rounds), again and again."""
    assert store.wrong is not None
    while True:
        head = await trio.to_thread.run_sync(rpc, args.rpc, "swarm_node")
        current = head.get("round") or 0
        for r in range(max(0, current - 2), current + 1):
            info = await trio.to_thread.run_sync(rpc, args.rpc, "swarm_getRound", r) or {}
            cids = [c["updateHash"] for c in info.get("commits", [])]
            if info.get("finalHash"):
                cids.append(info["finalHash"])
            for cid in cids:  # re-announced every pass: peers that joined since must hear it too
                await node.gossip.publish(UPDATES, Announcement(r, bytes.fromhex(cid[2:]), len(store.wrong)))
                if cid not in claimed:
                    claimed.add(cid)
                    store.announced += 1
        store.write_report()
        await trio.sleep(0.5)  # polling the chain over RPC: the liar has no event to wait on


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rpc", required=True)
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--report", type=Path, required=True)
    try:
        trio.run(main, ap.parse_args())
    except KeyboardInterrupt:
        pass
