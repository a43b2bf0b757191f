"""`duet autoscaler`: scales a release's prefill and decode Deployments from its metrics."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from control_plane.autoscaler import signals as metric_names
from control_plane.autoscaler.policy import PolicyConfig, PoolBounds

EPILOG = f"""\
signals (Prometheus text at --metrics-url, the control plane's GET /metrics):
  {metric_names.QUEUED_TOKENS}{{pool="prefill"}}   prefill queue depth in tokens
  {metric_names.RUNNING_REQUESTS}{{pool="decode"}} running sequences
  {metric_names.FREE_SLOTS}{{pool="decode"}}       sequences the pool can still admit
  {metric_names.WORKERS}{{pool=...}}               registered workers
  p90 of {metric_names.TTFT} (prefill) and {metric_names.ITL} (decode)

A pool grows when its load needs more workers or its p90 latency is over target; it shrinks
one replica at a time after --scale-down-after idle evaluations, never below its minimum nor
below what its running requests need. After a change a pool is left alone for --cooldown
seconds. Needs get and patch on deployments/scale (the chart's RBAC grants exactly that).
"""


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "autoscaler",
        help="scale the prefill and decode Deployments from queue depth and latency",
        description="Scale <release>-prefill and <release>-decode separately through the "
        "Kubernetes scale subresource, from the control plane's metrics.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--namespace", required=True, metavar="NS", help="namespace of the release")
    p.add_argument(
        "--release",
        required=True,
        metavar="R",
        help="name prefix of the Deployments: the Helm release (or fullnameOverride)",
    )
    p.add_argument(
        "--metrics-url",
        required=True,
        metavar="URL",
        help="control plane metrics, e.g. http://duet-control-plane:8000/metrics",
    )
    p.add_argument(
        "--interval",
        type=_positive_float,
        default=15.0,
        metavar="S",
        help="seconds between evaluations (default %(default)s)",
    )
    p.add_argument(
        "--cooldown",
        type=float,
        default=120.0,
        metavar="S",
        help="seconds a pool is left alone after a change (default %(default)s)",
    )
    _add_policy_args(p)
    p.add_argument(
        "--kube-host",
        metavar="URL",
        help="Kubernetes API URL without auth (kubectl proxy, tests); default: in-cluster "
        "service account, else kubeconfig",
    )
    p.add_argument("--once", action="store_true", help="evaluate once and exit")
    p.add_argument("--dry-run", action="store_true", help="log decisions without scaling")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    p.set_defaults(func=run)


def _add_policy_args(p: argparse.ArgumentParser) -> None:
    """Replica bounds per pool and the signals' targets."""
    for pool in ("prefill", "decode"):
        for end, default in (("min", 1), ("max", 4)):
            p.add_argument(
                f"--{end}-{pool}",
                type=_positive_int,
                default=default,
                metavar="N",
                help=f"{'fewest' if end == 'min' else 'most'} {pool} replicas (default {default})",
            )
    p.add_argument(
        "--prefill-tokens-per-worker",
        type=_positive_float,
        default=16384.0,
        metavar="T",
        help="queued prompt tokens one prefill worker should carry (default %(default)s)",
    )
    p.add_argument(
        "--decode-target-utilization",
        type=_positive_float,
        default=0.8,
        metavar="F",
        help="fraction of decode slots in use to aim for, in (0, 1] (default %(default)s)",
    )
    p.add_argument(
        "--ttft-p90-target",
        type=_positive_float,
        default=2.0,
        metavar="S",
        help="p90 time to first token above which prefill grows (default %(default)s)",
    )
    p.add_argument(
        "--itl-p90-target",
        type=_positive_float,
        default=0.1,
        metavar="S",
        help="p90 inter-token latency above which decode grows (default %(default)s)",
    )
    p.add_argument(
        "--scale-down-after",
        type=_positive_int,
        default=3,
        metavar="N",
        help="consecutive idle evaluations before removing a replica (default %(default)s)",
    )


def policy_config(args: argparse.Namespace) -> PolicyConfig:
    for pool in ("prefill", "decode"):
        lo, hi = getattr(args, f"min_{pool}"), getattr(args, f"max_{pool}")
        if lo > hi:
            raise ValueError(f"--min-{pool} ({lo}) is above --max-{pool} ({hi})")
    if not 0 < args.decode_target_utilization <= 1:
        raise ValueError("--decode-target-utilization must be in (0, 1]")
    if args.cooldown < 0:
        raise ValueError("--cooldown must be >= 0")
    return PolicyConfig(
        prefill=PoolBounds(args.min_prefill, args.max_prefill),
        decode=PoolBounds(args.min_decode, args.max_decode),
        cooldown_s=args.cooldown,
        prefill_tokens_per_worker=args.prefill_tokens_per_worker,
        decode_target_utilization=args.decode_target_utilization,
        ttft_p90_target_s=args.ttft_p90_target,
        itl_p90_target_s=args.itl_p90_target,
        scale_down_after=args.scale_down_after,
    )


def run(args: argparse.Namespace) -> int:
    from control_plane.autoscaler.kube import DeploymentScaler, api_client
    from control_plane.autoscaler.loop import Autoscaler, http_metrics

    try:
        config = policy_config(args)
    except ValueError as err:
        sys.stderr.write(f"duet autoscaler: error: {err}\n")
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    scaler = DeploymentScaler(api_client(args.kube_host), args.namespace)
    autoscaler = Autoscaler(
        scaler, http_metrics(args.metrics_url), config, args.release, dry_run=args.dry_run
    )
    if args.once:
        autoscaler.tick()
        return 0
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    autoscaler.run(args.interval, stop)
    return 0
