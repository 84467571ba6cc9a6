"""Recompile the Vyper contracts and rewrite their committed JSON artifacts (--check: only compare)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from consensus.contracts import CONTRACT_NAMES, artifact_json, artifact_path, compile_source  # noqa: E402


def stale_artifacts() -> list[str]:
    """Names of contracts whose committed artifact differs from a fresh compile."""
    stale = []
    for name in CONTRACT_NAMES:
        path = artifact_path(name)
        fresh = artifact_json(compile_source(name))
        if not path.exists() or path.read_text() != fresh:
            stale.append(name)
    return stale


def write_artifacts() -> None:
    for name in CONTRACT_NAMES:
        path = artifact_path(name)
        path.write_text(artifact_json(compile_source(name)))
        print(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if any committed artifact is stale")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_artifacts()
        if stale:
            print(f"stale contract artifacts: {', '.join(stale)}; run scripts/compile_contracts.py")
            return 1
        print("contract artifacts up to date")
        return 0
    write_artifacts()
    return 0


if __name__ == "__main__":
    sys.exit(main())
