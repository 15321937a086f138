"""Benchmarks, each measured side by side with its baseline in one run.

  streamem bench engine   partial_fit points/s vs one scikit-learn EM iteration, and the
                          fraction of the machine's float64 matmul peak
  streamem bench kafka    the daemon vs a pass-through consumer->producer on the local broker
  streamem bench scale    per-instance throughput of `streamem run` processes with a shared
                          model vs without, and the leader's fold rate (deltas/s)

scikit-learn is needed for `engine` (pip install 'streamem[dev]').
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bench", metavar="WHAT", required=True)
    engine = sub.add_parser("engine", help="model throughput vs scikit-learn EM",
                            description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    engine.add_argument("--points", type=int, default=100_000, help="points per pass")
    engine.add_argument("--repeats", type=int, default=10, help="runs per measurement (best kept)")
    engine.add_argument("--sizes", default="8x8,16x32",
                        help="comma-separated KxD sizes (default: 8x8,16x32)")
    kafka = sub.add_parser("kafka", help="daemon throughput vs pass-through on the local broker",
                           description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    kafka.add_argument("--bootstrap-servers", default="127.0.0.1:9092")
    kafka.add_argument("--points", type=int, default=1_500_000, help="points per run "
                       "(a quarter is warm-up: the rest runs each side for seconds)")
    kafka.add_argument("--points-per-message", type=int, nargs="+", default=[1, 1000],
                       help="message sizes to measure (default: 1 1000)")
    scale = sub.add_parser("scale", help="sharing one model: throughput on vs off, fold rate",
                           description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    scale.add_argument("--bootstrap-servers", default="127.0.0.1:9092")
    scale.add_argument("--points", type=int, default=2_000_000, help="points per trial")
    scale.add_argument("--instances", type=int, default=2, help="streamem run processes")
    scale.add_argument("--partitions", type=int, default=4, help="partitions of the input")
    scale.add_argument("--points-per-message", type=int, default=1000)
    scale.add_argument("--batch-messages", type=int, default=10,
                       help="kafka.max_poll_records of the instances (default: 10; keep a "
                       "batch's points x d x 8 bytes under 1 MiB)")
    scale.add_argument("--k", type=int, default=8, help="components of the daemons' model")
    scale.add_argument("--d", type=int, default=8, help="features of the input points")
    scale.add_argument("--repeats", type=int, default=3,
                       help="trials per mode, alternating (best kept)")
    scale.add_argument("--fold-size", default="16x32", help="KxD of the fold-rate model")
    scale.add_argument("--deltas", type=int, default=300, help="deltas folded per measurement")
    scale.add_argument("--points-per-delta", type=int, default=1000)


def main(args: argparse.Namespace) -> int:
    if args.bench == "engine":
        return _engine(args)
    if args.bench == "scale":
        from streamem.bench import scale

        return scale.main(args)
    from streamem.bench import kafka as kafka_bench

    return kafka_bench.main(args)


def _engine(args: argparse.Namespace) -> int:
    import os

    try:
        import sklearn  # noqa: F401
    except ImportError:
        print("streamem bench engine needs scikit-learn: pip install 'streamem[dev]'")
        return 2
    from streamem.bench import engine

    sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes.split(",")]
    results = engine.run(sizes, n_points=args.points, repeats=args.repeats)  # type: ignore[arg-type]
    print(engine.report(results, os.environ.get("OPENBLAS_NUM_THREADS", "default")))
    return 0
