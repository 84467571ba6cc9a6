#!/usr/bin/env python3
"""Execution-layer benchmark: block build/import times and sustained pool -> block -> import throughput.

    python scripts/bench_chain.py [--out bench_chain.json] [--repeats 3] [--sustained-txs 3000]

Everything runs on real LevelDB dirs in a temp dir (fsync on commit, as a node does). "build" is the
proposer's build_block + commit; "import" is another node's execute_block + commit of the same block.
Signing is client work and is excluded; pool admission (decode, signature recovery, checks) is included
in the sustained figures. "sustained, one process" runs both chains in one process, one after the
other (a lower bound); "sustained, two processes" imports in a second process, as another node would,
so that building block n+1 overlaps importing block n (the clock stops when the importer has the last
block and its state root matches). Wall-clock figures depend on what else runs on the machine, so CPU
time is reported too; "CPU-bound tx/s" is what one dedicated core per node would sustain (for two
processes, the busier of the two sets the pace).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eth_utils import keccak  # noqa: E402

from consensus.chain import ExecutionChain  # noqa: E402
from consensus.devtools import address_of, dev_key, sign_tx  # noqa: E402
from consensus.envelope import Envelope  # noqa: E402
from consensus.genesis import AccountSpec, Genesis, ValidatorSpec, dump_genesis, load_genesis  # noqa: E402
from consensus.genesis_block import ROUNDS_ADDRESS  # noqa: E402
from consensus.service import after_commit, make_pool, propose_from_pool, submit_raw  # noqa: E402
from consensus.txpool import PoolLimits  # noqa: E402

BLOCK_SIZES = (1, 10, 100, 500)
CONTRACT_CALLS = 100
N_SENDERS = 64
FIRST_CALLER = 1000  # dev keys >= this register with SwarmRounds, one call each
COINBASE = b"\x42" * 20


def bench_genesis() -> Genesis:
    senders = [dev_key(i) for i in range(N_SENDERS)]
    callers = [dev_key(FIRST_CALLER + i) for i in range(CONTRACT_CALLS)]
    accounts = tuple(AccountSpec(address_of(k), 10**24) for k in senders + callers)
    return Genesis(chain_id=7331, validators=(ValidatorSpec(address_of(senders[0]), 32 * 10**18),),
                   accounts=accounts, genesis_time=1_000)


class Nonces:
    def __init__(self) -> None:
        self.next: dict[int, int] = {}

    def take(self, key_index: int) -> int:
        n = self.next.get(key_index, 0)
        self.next[key_index] = n + 1
        return n


def transfers(count: int, nonces: Nonces, chain_id: int) -> list[bytes]:
    out = []
    for i in range(count):
        k = i % N_SENDERS
        out.append(sign_tx(dev_key(k), chain_id, nonces.take(k), to=keccak(i.to_bytes(8, "big"))[:20], value=1))
    return out


def register_calls(first: int, chain_id: int) -> list[bytes]:
    from eth_abi import encode

    selector = keccak(b"register(string)")[:4]
    from swarmnode.p2p.identity import peer_id_of

    return [sign_tx(dev_key(first + i), chain_id, 0, to=ROUNDS_ADDRESS, gas=500_000,
                    data=selector + encode(["string"], [peer_id_of(dev_key(first + i)).to_base58()]))
            for i in range(CONTRACT_CALLS)]


def time_block(builder: ExecutionChain, importer: ExecutionChain, raws: list[bytes],
               now: float) -> tuple[float, float, float, float]:
    """(build wall, import wall, build CPU, import CPU) seconds."""
    txs = [builder.decode_transaction(r) for r in raws]
    t0, c0 = time.perf_counter(), time.process_time()
    executed = builder.build_block(txs, coinbase=COINBASE, now=now)
    builder.commit(executed.hash, b"cert")
    t1, c1 = time.perf_counter(), time.process_time()
    imported = importer.execute_block(executed.encode(), now=now)
    importer.commit(imported.hash, b"cert")
    t2, c2 = time.perf_counter(), time.process_time()
    if importer.head.state_root != builder.head.state_root:
        raise SystemExit("state roots differ between builder and importer")
    failed = sum(1 for r in executed.receipts if r.state_root != b"\x01")
    if failed:
        raise SystemExit(f"{failed} transactions failed in the benchmark block")
    return t1 - t0, t2 - t1, c1 - c0, c2 - c1


def bench_blocks(tmp: Path, genesis: Genesis, repeats: int) -> list[dict[str, object]]:
    builder = ExecutionChain.open(tmp / "b", genesis)
    importer = ExecutionChain.open(tmp / "i", genesis)
    nonces, rows = Nonces(), []
    try:
        for n in BLOCK_SIZES:
            times = [time_block(builder, importer, transfers(n, nonces, genesis.chain_id),
                                now=genesis.genesis_time + builder.height) for _ in range(repeats)]
            rows.append(_row(f"{n} transfers", n, times))
    finally:
        builder.close()
        importer.close()
    rows.append(bench_contract_calls(tmp, genesis, repeats))
    return rows


def bench_contract_calls(tmp: Path, genesis: Genesis, repeats: int) -> dict[str, object]:
    """100 SwarmRounds.register calls (a storage-heavy call that emits an event). Each repeat starts from
    a fresh genesis because the registry holds at most 128 participants."""
    times = []
    for r in range(repeats):
        builder = ExecutionChain.open(tmp / f"cb{r}", genesis)
        importer = ExecutionChain.open(tmp / f"ci{r}", genesis)
        try:
            times.append(time_block(builder, importer, register_calls(FIRST_CALLER, genesis.chain_id),
                                    genesis.genesis_time))
        finally:
            builder.close()
            importer.close()
    return _row(f"{CONTRACT_CALLS} contract calls (SwarmRounds.register)", CONTRACT_CALLS, times)


# MODEXP (precompile 5) with a 32-byte base and modulus and a 100,000-byte exponent of 0xff bytes: ~4.3M gas
# (EIP-2565) plus ~1.6M of calldata, and one long pow() in py-evm
MODEXP_CALL = ((32).to_bytes(32, "big") + (100_000).to_bytes(32, "big") + (32).to_bytes(32, "big")
               + (3).to_bytes(32, "big") + b"\xff" * 100_000 + (2**255 - 19).to_bytes(32, "big"))
MODEXP_GAS = 6_000_000


def bench_forbidden_targets(tmp: Path, genesis: Genesis) -> dict[str, dict[str, object]]:
    """What a hostile proposer's block costs an importer that executes it, against refusing it by the
    transaction rule (consensus.chain: no creation, no precompile), for two blocks within the 30M block gas
    limit: 5 direct MODEXP calls of 6M gas, and 2 contract creations whose code builds a 300,000-byte
    exponent in memory and calls MODEXP. Each block is built with the rule switched off, as a proposer
    running other code would; the importer executes it with the rule off, then refuses it with the rule on."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_stall import modexp_code  # creation code that builds a long exponent in memory, then MODEXP

    calls = [sign_tx(dev_key(i), genesis.chain_id, 0, to=b"\x00" * 19 + b"\x05", data=MODEXP_CALL,
                     gas=MODEXP_GAS) for i in range(5)]
    creations = [sign_tx(dev_key(i), genesis.chain_id, 0, to=None, data=bytes.fromhex(modexp_code(300_000)[2:]),
                         gas=14_500_000) for i in range(2)]
    return {"calls": _forbidden_block(tmp / "calls", genesis, calls, "5 MODEXP calls"),
            "creations": _forbidden_block(tmp / "creations", genesis, creations,
                                          "2 contract creations whose code calls MODEXP")}


def bench_slow_calls(tmp: Path, genesis: Genesis) -> dict[str, object]:
    """A block filled to the gas limit with SwarmRounds.register calls carrying a well-formed peer id of
    another key (the on-chain base58 decoding runs, then the call reverts): what an importer spends on it
    as built without a budget, and as a proposer builds it under BLOCK_CPU_BUDGET_S."""
    from consensus.chain import BLOCK_CPU_BUDGET_S
    from swarmnode.node import txs as swarm_txs
    from swarmnode.p2p.identity import peer_id_of

    data = swarm_txs.register_data(peer_id_of(dev_key(N_SENDERS + 1)).to_base58())
    per_call = 72_000
    count = genesis.block_gas_limit // per_call
    bond = genesis.rounds.participant_bond  # the value register takes (it checks it before decoding)
    raws = [sign_tx(dev_key(i % N_SENDERS), genesis.chain_id, i // N_SENDERS, to=ROUNDS_ADDRESS, data=data,
                    value=bond, gas=per_call) for i in range(count)]
    out: dict[str, object] = {"block": f"{count} reverting SwarmRounds.register calls", "budget_s": BLOCK_CPU_BUDGET_S}
    for name, budget in (("without_budget", None), ("with_budget", BLOCK_CPU_BUDGET_S)):
        builder = ExecutionChain.open(tmp / f"s{name}b", genesis)
        importer = ExecutionChain.open(tmp / f"s{name}i", genesis)
        try:
            block = builder.build_block([builder.decode_transaction(r) for r in raws], coinbase=COINBASE,
                                        now=genesis.genesis_time + 1, time_budget_s=budget)
            c0 = time.thread_time()
            importer.execute_block(block.encode(), now=None)
            out[name] = {"txs": len(block.block.transactions), "gas_used": int(block.block.header.gas_used),
                         "import_cpu_ms": round((time.thread_time() - c0) * 1000, 1)}
        finally:
            builder.close()
            importer.close()
    return out


def _forbidden_block(tmp: Path, genesis: Genesis, raws: list[bytes], label: str) -> dict[str, object]:
    import consensus.chain as chain_module
    from consensus.chain import InvalidBlock

    rule = chain_module.target_problem
    builder = ExecutionChain.open(tmp / "fb", genesis)
    importer = ExecutionChain.open(tmp / "fi", genesis)
    try:
        chain_module.target_problem = lambda tx: None  # type: ignore[assignment]
        try:
            block = builder.build_block([builder.decode_transaction(r) for r in raws], coinbase=COINBASE,
                                        now=genesis.genesis_time + 1)
            encoded = block.encode()
            t0, c0 = time.perf_counter(), time.process_time()
            importer.execute_block(encoded, now=None)
            executed = (time.perf_counter() - t0, time.process_time() - c0)
            importer.discard_pending()
        finally:
            chain_module.target_problem = rule  # type: ignore[assignment]
        t0 = time.perf_counter()
        try:
            importer.execute_block(encoded, now=None)
        except InvalidBlock as exc:
            refused, reason = time.perf_counter() - t0, str(exc)
        else:
            raise SystemExit("the block of MODEXP calls was not refused")
    finally:
        builder.close()
        importer.close()
    return {"block": f"{label} (hostile proposer)", "gas_used": int(block.block.header.gas_used),
            "execute_ms_without_rule": round(executed[0] * 1000, 1),
            "execute_cpu_ms_without_rule": round(executed[1] * 1000, 1),
            "refuse_ms_with_rule": round(refused * 1000, 2), "refusal": reason}


def _row(label: str, n: int, times: list[tuple[float, float, float, float]]) -> dict[str, object]:
    build, imp, build_cpu, import_cpu = (statistics.median(t[k] for t in times) for k in range(4))
    return {"block": label, "txs": n, "build_ms": round(build * 1000, 1), "import_ms": round(imp * 1000, 1),
            "build_cpu_ms": round(build_cpu * 1000, 1), "import_cpu_ms": round(import_cpu * 1000, 1),
            "build_tx_per_s": round(n / build), "import_tx_per_s": round(n / imp)}


def bench_sustained(tmp: Path, genesis: Genesis, total: int, block_txs: int, two_processes: bool) -> dict[str, object]:
    """Pre-signed txs -> pool admission -> build + commit -> import + commit on a second chain."""
    tag = "p" if two_processes else "s"
    builder = ExecutionChain.open(tmp / f"{tag}b", genesis)
    pool = make_pool(builder, PoolLimits(max_txs=total + 1, max_per_sender=total // N_SENDERS + 1))
    raws = transfers(total, Nonces(), genesis.chain_id)
    importer = _ProcessImporter(tmp, genesis) if two_processes else _LocalImporter(tmp / f"{tag}i", genesis)
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        for raw in raws:
            submit_raw(builder, pool, raw)
        t_admit = time.perf_counter() - t0
        blocks = 0
        while len(pool):
            executed = propose_from_pool(builder, pool, coinbase=COINBASE, now=genesis.genesis_time + blocks,
                                         max_txs=block_txs)
            builder.commit(executed.hash, b"cert")
            after_commit(builder, pool, tuple(executed.block.transactions))
            importer.send(Envelope(executed.encode()).encode())
            blocks += 1
        root, importer_cpu = importer.finish()
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
        if root != builder.head.state_root:
            raise SystemExit("sustained: state roots differ")
    finally:
        builder.close()
    # CPU-bound figure: what one dedicated core per node sustains (the busiest process sets the pace)
    cpu_bound = cpu if not two_processes else max(cpu, importer_cpu)
    return {"mode": "two processes" if two_processes else "one process", "txs": total, "blocks": blocks,
            "block_txs": block_txs, "seconds": round(elapsed, 2),
            "admission_ms_per_tx": round(t_admit / total * 1000, 3), "tx_per_s": round(total / elapsed),
            "cpu_seconds": round(cpu_bound, 2), "tx_per_cpu_s": round(total / cpu_bound)}


class _LocalImporter:
    def __init__(self, path: Path, genesis: Genesis) -> None:
        self.chain = ExecutionChain.open(path, genesis)

    def send(self, envelope: bytes) -> None:
        self.chain.import_envelope(Envelope.decode(envelope), b"cert")

    def finish(self) -> tuple[bytes, float]:
        root = bytes(self.chain.head.state_root)
        self.chain.close()
        return root, 0.0


class _ProcessImporter:
    """Another node: a child process importing length-prefixed envelopes from its stdin."""

    def __init__(self, tmp: Path, genesis: Genesis) -> None:
        (tmp / "genesis.toml").write_text(dump_genesis(genesis))
        self.proc = subprocess.Popen([sys.executable, __file__, "--importer", str(tmp)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        if self.proc.stdout.readline().strip() != b"ready":  # type: ignore[union-attr]
            raise SystemExit("importer process failed to start")

    def send(self, envelope: bytes) -> None:
        self.proc.stdin.write(struct.pack(">I", len(envelope)) + envelope)  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]

    def finish(self) -> tuple[bytes, float]:
        self.proc.stdin.write(struct.pack(">I", 0))  # type: ignore[union-attr]
        self.proc.stdin.close()  # type: ignore[union-attr]
        root, cpu = self.proc.stdout.readline().split()  # type: ignore[union-attr]
        self.proc.wait(timeout=60)
        return bytes.fromhex(root.decode()), float(cpu)


def importer_main(tmp: Path) -> int:
    chain = ExecutionChain.open(tmp / "pi", load_genesis(tmp / "genesis.toml"))
    print("ready", flush=True)
    stdin = sys.stdin.buffer
    c0 = time.process_time()
    while (size := struct.unpack(">I", stdin.read(4))[0]) != 0:
        chain.import_envelope(Envelope.decode(stdin.read(size)), b"cert")
    print(bytes(chain.head.state_root).hex(), time.process_time() - c0, flush=True)
    chain.close()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench_chain.json"), help="JSON results file")
    parser.add_argument("--repeats", type=int, default=3, help="runs per block size (median reported)")
    parser.add_argument("--sustained-txs", type=int, default=3000)
    parser.add_argument("--block-txs", type=int, default=200, help="max txs per block in sustained mode")
    parser.add_argument("--forbidden-only", action="store_true",
                        help="only the hostile blocks: MODEXP calls and creations (executed against refused), "
                             "and slow contract calls (built with and without the proposer's CPU budget)")
    parser.add_argument("--importer", type=Path, help=argparse.SUPPRESS)  # internal: the second node
    args = parser.parse_args()
    if args.importer:
        return importer_main(args.importer)

    genesis = bench_genesis()
    with tempfile.TemporaryDirectory(prefix="bench_chain_") as tmp:
        forbidden = bench_forbidden_targets(Path(tmp), genesis)
        for f in forbidden.values():
            print(f"{f['block']}, {f['gas_used']:,} gas: an importer executing it spends "
                  f"{f['execute_ms_without_rule']} ms ({f['execute_cpu_ms_without_rule']} ms CPU); "
                  f"the transaction rule refuses it in {f['refuse_ms_with_rule']} ms", flush=True)
        slow = bench_slow_calls(Path(tmp), genesis)
        for name in ("without_budget", "with_budget"):
            r = slow[name]
            print(f"{slow['block']}, built {name.replace('_', ' ')}: {r['txs']} txs, {r['gas_used']:,} gas, "
                  f"an importer spends {r['import_cpu_ms']} ms CPU", flush=True)
        forbidden["slow_contract_calls"] = slow
        if args.forbidden_only:
            args.out.write_text(json.dumps({"forbidden_targets": forbidden}, indent=2) + "\n")
            print(f"wrote {args.out}")
            return 0
        rows = bench_blocks(Path(tmp), genesis, args.repeats)
        sustained = [bench_sustained(Path(tmp), genesis, args.sustained_txs, args.block_txs, two_processes=p)
                     for p in (False, True)]

    print(f"{'block':<45} {'build ms':>9} {'import ms':>10} {'build CPU':>10} {'import CPU':>11} "
          f"{'build tx/s':>11} {'import tx/s':>12}")
    for r in rows:
        print(f"{r['block']:<45} {r['build_ms']:>9} {r['import_ms']:>10} {r['build_cpu_ms']:>10} "
              f"{r['import_cpu_ms']:>11} {r['build_tx_per_s']:>11} {r['import_tx_per_s']:>12}")
    for run in sustained:
        print(f"sustained pool -> block -> import, {run['mode']}: {run['txs']} transfers in {run['blocks']} "
              f"blocks of <= {run['block_txs']}: {run['seconds']} s = {run['tx_per_s']} tx/s "
              f"(pool admission {run['admission_ms_per_tx']} ms/tx; CPU-bound {run['tx_per_cpu_s']} tx/s)")
    load = [round(x, 2) for x in os.getloadavg()]
    print(f"machine: {os.cpu_count()} cores, load average {load} (figures scale with contention)")
    args.out.write_text(json.dumps({"blocks": rows, "sustained": sustained, "forbidden_targets": forbidden,
                                    "cpu_count": os.cpu_count(),
                                    "load_average": load}, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
