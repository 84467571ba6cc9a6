"""`swarmnode genesis new|show`: write a genesis file (and node keys) from a few flags; inspect one.

Keys are 32-byte secp256k1 secrets stored as hex in `<keys-dir>/node-<i>.key` (mode 0600). Each key is
both the node's chain account and its libp2p identity (the peer id in the genesis is derived from it).

--dev-keys makes the keys DETERMINISTIC AND PUBLIC: secret_i = keccak256(b"swarmnode-dev-key-" + str(i)).
Never use them for anything of value. The shipped genesis files use them so the demo can regenerate
the keys that match them with the command written in each file's first line.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shlex
import tomllib
from pathlib import Path
from typing import Any

from consensus.errors import ConsensusError
from consensus.genesis import (
    ADMISSION_CHOICES,
    UNDER_MIN_CHOICES,
    AccountSpec,
    ConsensusParams,
    Genesis,
    RoundsParams,
    ValidatorSpec,
    dump_genesis,
    format_amount,
    load_genesis,
    parse_amount,
)
from swarmnode.cli.errors import CliError
from swarmnode.learning.errors import LearningError

TASK_CHOICES = ("seed", "demo", "tiny")
DEFAULT_CHAIN_ID = 7331


DEFAULT_EMPTY_BLOCK_MS = 5000  # new networks idle at one block per 5 s (blocks every second when busy)

def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("genesis", help="create or inspect genesis files",
                                   description="Create or inspect genesis files.")
    sub = parser.add_subparsers(title="genesis commands", metavar="ACTION")
    new = sub.add_parser("new", help="write a genesis file and generate node keys",
                         description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    new.add_argument("--validators", type=int, required=True, metavar="N", help="number of validator nodes")
    task = new.add_mutually_exclusive_group(required=True)
    task.add_argument("--task", choices=TASK_CHOICES, help="learning task preset")
    task.add_argument("--task-file", type=Path, metavar="FILE",
                      help="a TOML file with a [task] table (and [task.data] for local data): e.g. the "
                           "hospitals example's; initial_weights in it are relative to the genesis file")
    new.add_argument("--out", type=Path, required=True, metavar="FILE", help="genesis TOML to write")
    new.add_argument("--keys-dir", type=Path, required=True, metavar="DIR", help="where node-<i>.key files go")
    new.add_argument("--dev-keys", action="store_true", help="deterministic, PUBLIC, insecure keys (demo only)")
    new.add_argument("--chain-id", type=int, default=DEFAULT_CHAIN_ID, help=f"default {DEFAULT_CHAIN_ID}")
    new.add_argument("--stake", default="32 ether", help="stake per validator (default: 32 ether)")
    new.add_argument("--balance", default="1000 ether", help="funds per validator account (default: 1000 ether)")
    _add_rounds_arguments(new)
    new.add_argument("--epoch-length", type=int, default=ConsensusParams().epoch_length, metavar="BLOCKS",
                     help=f"blocks per validator-set epoch (default: {ConsensusParams().epoch_length})")
    new.add_argument("--block-interval-ms", type=int, default=ConsensusParams().block_interval_ms, metavar="MS",
                     help="wait after a block before the next one starts while transactions are pending "
                          f"(default: {ConsensusParams().block_interval_ms})")
    new.add_argument("--empty-block-interval-ms", type=int, default=DEFAULT_EMPTY_BLOCK_MS, metavar="MS",
                     help="longest gap between blocks while no transaction is pending; 0: an empty block every "
                          f"block interval (default: {DEFAULT_EMPTY_BLOCK_MS})")
    new.add_argument("--genesis-time", type=int, default=0, metavar="SECONDS", help="block 0 timestamp (default: 0)")
    new.add_argument("--force", action="store_true", help="overwrite existing files")
    new.set_defaults(func=cmd_new)
    show = sub.add_parser("show", help="validate a genesis file and print its summary and network id")
    show.add_argument("file", type=Path)
    show.set_defaults(func=cmd_show)
    parser.set_defaults(func=lambda _args: parser.print_help() or 2)


def _add_rounds_arguments(new: argparse.ArgumentParser) -> None:
    """The [rounds] flags; their defaults are RoundsParams' (times are block-timestamp seconds)."""
    d = RoundsParams()
    rounds = new.add_argument_group("learning rounds ([rounds] table; times are block-timestamp seconds)")
    rounds.add_argument("--commit-window-s", type=int, default=d.commit_window_s, metavar="SECONDS",
                        help=f"the longest a round waits for commits; it closes sooner once every expected "
                             f"participant committed (default: {d.commit_window_s})")
    rounds.add_argument("--straggler-grace-pct", type=int, default=d.straggler_grace_pct, metavar="PCT",
                        help="once 2/3 of the expected participants committed, the rest get this %% of the time "
                             f"taken so far, then the window closes; 0: off (default: {d.straggler_grace_pct})")
    rounds.add_argument("--min-grace-s", type=int, default=d.min_grace_s, metavar="SECONDS",
                        help=f"the straggler grace is at least this long (default: {d.min_grace_s})")
    rounds.add_argument("--min-participants", type=int, default=d.min_participants, metavar="N",
                        help=f"fewest commits a round aggregates (default: {d.min_participants})")
    rounds.add_argument("--under-min", choices=UNDER_MIN_CHOICES, default=d.under_min,
                        help="a round with fewer than --min-participants commits at its deadline: 'extend' waits "
                             "for more, 'skip' finalizes it on its base model without contributors "
                             f"(default: {d.under_min})")
    rounds.add_argument("--absent-rounds", type=int, default=d.absent_rounds, metavar="K",
                        help="a participant that misses K rounds in a row is no longer waited for, until it "
                             f"commits again; 0: never (default: {d.absent_rounds})")
    rounds.add_argument("--admission", choices=ADMISSION_CHOICES, default=d.admission,
                        help="how participants register after genesis: 'stake' pays --participant-bond (refunded "
                             "on leave), 'allowlist' needs approvals signed by validators holding > 2/3 of stake "
                             f"(default: {d.admission})")
    rounds.add_argument("--participant-bond", default=format_amount(d.participant_bond), metavar="AMOUNT",
                        help=f"bond paid by register in stake admission (default: {format_amount(d.participant_bond)})")
    rounds.add_argument("--max-samples", type=int, default=None, metavar="N",
                        help="the largest sample count a commit may report; it caps a participant's share of the "
                             "rewards and the weight the aggregation rule may give it (default: twice the task's "
                             "largest client share)")
    rounds.add_argument("--reward", default=format_amount(d.reward_per_round), metavar="AMOUNT",
                        help=f"reward per learning round (default: {format_amount(d.reward_per_round)})")
    priv = new.add_argument_group("privacy ([privacy] table: swarmnode/privacy/config.py)")
    priv.add_argument("--dp", choices=("off", "participant", "example"), default="off",
                      help="differential privacy: 'participant' clips each update and adds Gaussian noise "
                           "(DP-FedAvg), 'example' trains with DP-SGD inside each node (default: off)")
    priv.add_argument("--epsilon", type=float, default=None, help="each participant's budget (with --dp)")
    priv.add_argument("--delta", type=float, default=1e-5, help="the budget's delta (default: 1e-5)")
    priv.add_argument("--clip-norm", type=float, default=1.0,
                      help="L2 bound of an update (participant) or of one example's gradient (example); default 1")
    priv.add_argument("--dp-rounds", type=int, default=60, metavar="R",
                      help="rounds the noise is calibrated for: R commits spend the budget (default: 60)")
    priv.add_argument("--secure-aggregation", action="store_true",
                      help="pairwise-masked updates: only the round's sum is ever revealed")
    # replaced: without this, argparse would take "--commit-window 20" as an abbreviation of --commit-window-s
    comp = new.add_argument_group("update compression ([task.compression]: swarmnode/aggregation/compress.py)")
    comp.add_argument("--compression", choices=("none", "quantize", "topk"), default=None,
                      help="how updates travel: quantize (stochastic rounding to --compression-bits) or topk "
                           "(the largest --compression-fraction of each tensor, with error feedback); "
                           "default: the task's (none)")
    comp.add_argument("--compression-bits", type=int, default=8, metavar="B",
                      help="bits per value sent, 2..8 (default: 8)")
    comp.add_argument("--compression-fraction", type=float, default=0.01, metavar="F",
                      help="topk: the share of each tensor's values sent, in (0, 1] (default: 0.01)")
    new.add_argument("--commit-window", type=int, default=None, help=argparse.SUPPRESS)


def cmd_new(args: argparse.Namespace) -> int:
    if args.commit_window is not None:
        raise CliError("--commit-window (blocks) was replaced by --commit-window-s (seconds of block time)")
    if not 1 <= args.validators <= 64:
        raise CliError(f"--validators must be between 1 and 64, got {args.validators}")
    if not 1 <= args.chain_id < 2**53:
        raise CliError(f"--chain-id must be a positive integer below 2**53, got {args.chain_id}")
    block_ms = args.block_interval_ms
    if not 1 <= block_ms <= 600_000:
        raise CliError(f"--block-interval-ms must be between 1 and 600000, got {block_ms}")
    if args.empty_block_interval_ms != 0 and args.empty_block_interval_ms < block_ms:
        raise CliError(f"--empty-block-interval-ms must be 0 or at least the block interval ({block_ms}), "
                       f"got {args.empty_block_interval_ms}")
    _refuse_overwrite(args)
    from consensus.devtools import dev_key  # eth_account: half a second, only for this command

    keys = [dev_key(i) if args.dev_keys else secrets.token_bytes(32) for i in range(args.validators)]
    genesis = build_genesis(args, keys)
    text = f"# generated by: {_command_line(args)}\n" + dump_genesis(genesis)
    for i, key in enumerate(keys):
        write_key(args.keys_dir / f"node-{i}.key", key, overwrite=args.force)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out} ({args.validators} validators, task {args.task or args.task_file}, "
          f"chain id {args.chain_id})")
    print(f"wrote {args.validators} keys to {args.keys_dir}" + (" (INSECURE dev keys)" if args.dev_keys else ""))
    return 0


def build_genesis(args: argparse.Namespace, keys: list[bytes]) -> Genesis:
    from consensus.devtools import address_of
    from swarmnode.learning.tasks import TASK_PRESETS, genesis_model_hash  # imports torch: only when needed

    try:
        stake, balance = parse_amount(args.stake, "--stake"), parse_amount(args.balance, "--balance")
        reward = parse_amount(args.reward, "--reward")
        bond = parse_amount(args.participant_bond, "--participant-bond")
        task = _task_table(args) if args.task_file else dict(TASK_PRESETS[args.task])
        _set_compression(args, task)
        validators = tuple(ValidatorSpec(address_of(k), stake, peer_id_of(k)) for k in keys)
        privacy = _privacy_table(args, task)
        return Genesis(
            chain_id=args.chain_id, validators=validators,
            accounts=tuple(AccountSpec(v.address, balance) for v in validators),
            consensus=ConsensusParams(epoch_length=args.epoch_length, block_interval_ms=args.block_interval_ms,
                                      empty_block_interval_ms=args.empty_block_interval_ms),
            rounds=RoundsParams(
                commit_window_s=args.commit_window_s, straggler_grace_pct=args.straggler_grace_pct,
                min_grace_s=args.min_grace_s, min_participants=args.min_participants, under_min=args.under_min,
                absent_rounds=args.absent_rounds, admission=args.admission, participant_bond=bond,
                reward_per_round=reward, max_samples=_max_samples(args, task)),
            task=task, privacy=privacy, genesis_model_hash=genesis_model_hash(task, args.out.resolve().parent),
            genesis_time=args.genesis_time,
        )
    except (ConsensusError, LearningError) as exc:
        raise CliError(str(exc)) from exc


def _task_table(args: argparse.Namespace) -> dict[str, Any]:
    """The [task] table of --task-file, validated (unknown keys, schema, model) and written back in full."""
    from swarmnode.learning.tasks import Task

    try:
        raw = tomllib.loads(args.task_file.read_text())
    except OSError as exc:
        raise CliError(f"--task-file {args.task_file}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise CliError(f"--task-file {args.task_file}: not valid TOML: {exc}") from None
    table = raw.get("task")
    if not isinstance(table, dict):
        raise CliError(f"--task-file {args.task_file}: no [task] table")
    try:
        return Task.from_dict(table).to_dict()
    except (LearningError, TypeError) as exc:
        raise CliError(f"--task-file {args.task_file}: {exc}") from None


def _set_compression(args: argparse.Namespace, task: dict[str, Any]) -> None:
    """task.compression from the --compression flags (a --task-file's own table stays unless they are given)."""
    from swarmnode.aggregation.compress import Compression, CompressionError

    if args.compression is None:
        return
    if args.compression == "none":
        task.pop("compression", None)
        return
    table: dict[str, Any] = {"method": args.compression, "bits": args.compression_bits}
    if args.compression == "topk":
        table["fraction"] = args.compression_fraction
    try:
        Compression.from_dict(table)
    except CompressionError as exc:
        raise CliError(str(exc).replace("task.compression.", "--compression-")) from None
    if args.secure_aggregation:
        raise CliError("--compression cannot be used with --secure-aggregation: masks cover every coordinate at "
                       "full width")
    task["compression"] = table


SECAGG_RULES = ("fedavg", "fedavgm")  # rules that need only the sum of the updates


def _privacy_table(args: argparse.Namespace, task: dict[str, Any]) -> dict[str, Any]:
    """The [privacy] table from the flags (empty when everything is off). Participant mode pins the noise
    multiplier (the same for everyone) and raises task.max_update_norm above the norm a noised update
    reaches, which validators would otherwise refuse; example mode leaves z to each node, whose sampling
    rate depends on its own data size."""
    if args.dp == "off" and not args.secure_aggregation:
        if args.epsilon is not None:
            raise CliError("--epsilon needs --dp participant or --dp example")
        return {}
    from swarmnode.learning.models import build_model
    from swarmnode.learning.tasks import Task
    from swarmnode.privacy.config import PrivacyConfig, PrivacyConfigError
    from swarmnode.privacy.dp import DPError, noise_multiplier_for, noise_norm_bound, participant_noise_std

    table: dict[str, Any] = {"dp": args.dp}
    if args.dp != "off":
        if args.epsilon is None:
            raise CliError(f"--dp {args.dp} needs --epsilon (the budget of every participant)")
        table.update(epsilon=args.epsilon, delta=args.delta, clip_norm=args.clip_norm, rounds=args.dp_rounds)
    if args.secure_aggregation:
        if args.min_participants < 2:
            raise CliError("--secure-aggregation needs --min-participants 2 or more: the sum of one update is "
                           "that update")
        table.update(secure_aggregation=True)
        if task.get("rule") not in SECAGG_RULES:
            print(f"note: rule {task.get('rule')!r} needs individual updates; with --secure-aggregation only the "
                  f"round's sum is revealed, so the task uses fedavgm")
            task["rule"] = "fedavgm"
    try:
        cfg = PrivacyConfig.from_dict(table)
        if cfg.dp == "participant":
            z = noise_multiplier_for(cfg)
            table["noise_multiplier"] = round(z, 6)
            t = Task.from_dict(task)
            coords = sum(p.numel() for p in build_model(t.model_spec(), 0).parameters())
            std = participant_noise_std(cfg, z, args.min_participants)
            task["max_update_norm"] = max(float(task.get("max_update_norm", 0.0)),
                                          round(cfg.clip_norm + noise_norm_bound(std, coords), 1))
    except (PrivacyConfigError, DPError) as exc:
        raise CliError(str(exc)) from None
    return table


def _max_samples(args: argparse.Namespace, task: dict[str, Any]) -> int:
    """--max-samples, or twice the largest share a client of the task can hold: samples_per_client, or an
    equal split of the dataset's 60000 training images over num_clients. Dirichlet shares are unequal and
    not bounded by the mean (alpha 0.1 over 10 clients: largest training share up to 17188 for seeds 0-9,
    above the 12000 of twice an equal share in 3 of them): the whole training set then."""
    if args.max_samples is not None:
        if not 1 <= args.max_samples <= 2**64:
            raise CliError(f"--max-samples must be between 1 and 2**64, got {args.max_samples}")
        return int(args.max_samples)
    if task.get("dataset") in ("tabular", "image-folder"):
        return LOCAL_MAX_SAMPLES  # each node's own data: no share known in advance
    if not int(task.get("samples_per_client") or 0) and task.get("partition") == "dirichlet":
        return 60_000
    share = int(task.get("samples_per_client") or 0) or -(-60_000 // max(1, int(task.get("num_clients", 1))))
    return 2 * share


# --max-samples for a task on local data unless given: a node reporting more than a million examples
# weighs no more than one with a million (the robust rule caps weights at the round's median anyway)
LOCAL_MAX_SAMPLES = 1_000_000


def peer_id_of(secret: bytes) -> str:
    """The libp2p peer id of a secp256k1 secret (the same key is the node's chain account)."""
    from libp2p.crypto.secp256k1 import create_new_key_pair
    from libp2p.peer.id import ID

    return ID.from_pubkey(create_new_key_pair(secret).public_key).to_base58()


def write_key(path: Path, secret: bytes, *, overwrite: bool) -> None:
    """Write a hex secret readable by its owner only (0600), never widening an existing file's mode."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError as exc:
        raise CliError(f"key file {path} exists; use --force to overwrite") from exc
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(secret.hex() + "\n")
        f.flush()
        os.fsync(f.fileno())


def _refuse_overwrite(args: argparse.Namespace) -> None:
    if args.force:
        return
    existing = [p for p in [args.out, *(args.keys_dir / f"node-{i}.key" for i in range(args.validators))]
                if p.exists()]
    if existing:
        raise CliError(f"{existing[0]} exists; use --force to overwrite")


def _command_line(args: argparse.Namespace) -> str:
    parts = ["swarmnode", "genesis", "new", "--validators", str(args.validators),
             *(["--task", args.task] if args.task else ["--task-file", str(args.task_file)]),
             "--chain-id", str(args.chain_id)]
    r = RoundsParams()
    defaults = {"stake": "32 ether", "balance": "1000 ether", "reward": format_amount(r.reward_per_round),
                "commit_window_s": r.commit_window_s, "straggler_grace_pct": r.straggler_grace_pct,
                "min_grace_s": r.min_grace_s, "min_participants": r.min_participants, "under_min": r.under_min,
                "absent_rounds": r.absent_rounds, "admission": r.admission, "max_samples": None,
                "participant_bond": format_amount(r.participant_bond),
                "epoch_length": ConsensusParams().epoch_length,
                "block_interval_ms": ConsensusParams().block_interval_ms,
                "empty_block_interval_ms": DEFAULT_EMPTY_BLOCK_MS, "genesis_time": 0}
    for name, default in defaults.items():
        if getattr(args, name) != default:
            parts += ["--" + name.replace("_", "-"), str(getattr(args, name))]
    if args.dev_keys:
        parts.append("--dev-keys")
    parts += ["--out", str(args.out), "--keys-dir", "KEYS_DIR"]
    return shlex.join(parts)


def cmd_show(args: argparse.Namespace) -> int:
    from consensus.genesis_block import genesis_hash

    try:
        g = load_genesis(args.file)
        network = genesis_hash(g)
    except ConsensusError as exc:
        raise CliError(str(exc)) from exc
    print(f"chain id      {g.chain_id}")
    print(f"network id    0x{network.hex()}  (genesis block hash)")
    print(f"validators    {len(g.validators)}, total stake {g.total_stake} wei")
    print(f"accounts      {len(g.accounts)}")
    print(f"task          {g.task.get('dataset', '?')} / {g.task.get('model', '?')}, rule {g.task.get('rule', '?')}")
    print(f"model hash    0x{g.genesis_model_hash.hex()}")
    print(f"rounds        {describe_rounds(g.rounds)}")
    print(f"privacy       {describe_privacy(g.privacy)}")
    print(f"compression   {describe_compression(g.task)}")
    return 0


def describe_privacy(table: dict[str, Any]) -> str:
    dp = table.get("dp", "off")
    parts = ["differential privacy off" if dp == "off" else
             f"DP ({dp} level) epsilon {table.get('epsilon')} delta {table.get('delta', 1e-5)} over "
             f"{table.get('rounds', 60)} rounds, clip {table.get('clip_norm', 1.0)}"
             + (f", z {table['noise_multiplier']}" if table.get("noise_multiplier") else "")]
    parts.append("secure aggregation " + ("on" if table.get("secure_aggregation") else "off"))
    return ", ".join(parts)


def describe_compression(task: dict[str, Any]) -> str:
    from swarmnode.aggregation.compress import Compression, CompressionError

    try:
        return Compression.from_dict(task.get("compression")).describe()
    except (CompressionError, TypeError) as exc:
        return f"invalid ({exc})"


def describe_rounds(r: RoundsParams) -> str:
    """One line of a genesis' round rules, in the words of the flags that set them."""
    grace = f"grace {r.straggler_grace_pct}% (min {r.min_grace_s} s)" if r.straggler_grace_pct else "no grace"
    absent = f"dropped after {r.absent_rounds} missed" if r.absent_rounds else "never dropped"
    admission = (f"stake admission (bond {format_amount(r.participant_bond)})" if r.admission == "stake"
                 else "allow-list admission")
    return (f"window {r.commit_window_s} s, {grace}, min {r.min_participants} commit(s) ({r.under_min}), "
            f"{absent}, {admission}, reward {format_amount(r.reward_per_round)}, at most {r.max_samples} samples "
            f"per commit")
