"""The ``streamem`` command line: one sub-command per module in :mod:`streamem.commands`.

Each command module exposes ``add_arguments(parser)`` and ``main(args) -> int`` and keeps its
heavy imports inside ``main``, so ``streamem --help`` stays fast.

Exit codes: 0 success, 1 runtime failure, 2 bad usage or config, 130 interrupted twice.
"""

from __future__ import annotations

import os

# One BLAS thread unless the user says otherwise: the Kafka client's I/O thread needs the other
# core, and multi-threaded BLAS on small shapes stalls on 2-core machines. Set before numpy loads.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import importlib  # noqa: E402
import sys  # noqa: E402
from collections.abc import Sequence  # noqa: E402

from streamem import __version__  # noqa: E402

COMMANDS: dict[str, str] = {
    "run": "Run the daemon: consume points, cluster them, publish assignments.",
    "demo": "Cluster a synthetic drifting stream end to end and summarise it against the truth.",
    "produce": "Write synthetic points from a known mixture into a Kafka topic.",
    "inspect": "Describe a checkpoint in words (and optionally draw it).",
    "bench": "Measure the engine and the Kafka path side by side with their baselines.",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamem",
        description="Streaming Gaussian-mixture clustering with stepwise online EM.",
        epilog="Exit codes: 0 ok, 1 runtime failure, 2 bad usage or config.",
    )
    parser.add_argument("--version", action="version", version=f"streamem {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, summary in COMMANDS.items():
        module = importlib.import_module(f"streamem.commands.{name}")
        cmd = sub.add_parser(name, help=summary, description=module.__doc__ or summary,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(cmd)
        cmd.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args._module.main(args))


if __name__ == "__main__":
    sys.exit(main())
