"""Prefix-cache settings of a prefill worker: one frozen dataclass, built from CLI flags with
DUET_* environment defaults (the Helm chart sets the environment; flags win)."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

from engine.cache.prefix_policy import SnapshotPolicy

LIGHTNING_CHUNK = 64  # the runner's Lightning chunk; a block is a whole number of chunks
MIB = 1 << 20


@dataclass(frozen=True)
class PrefixCacheConfig:
    enabled: bool = True
    block_size: int = 64
    snapshots: str = "every:4"  # SnapshotPolicy.parse
    l1_mb: int = 1024  # device memory (host memory on the CPU build)
    l2_mb: int = 4096  # host memory
    l3: bool = False  # share blocks through Redis (needs redis_url)
    l3_ttl_s: float = 3600.0
    redis_url: str | None = None  # the index (and L3); None = local cache only
    redis_password: str | None = None
    redis_cluster: bool = False
    index_ttl_s: float = 300.0
    redis_timeout_s: float = 0.25

    def __post_init__(self) -> None:
        if self.block_size < 1 or self.block_size % LIGHTNING_CHUNK:
            raise ValueError(
                f"--prefix-block-size must be a positive multiple of the Lightning chunk "
                f"({LIGHTNING_CHUNK}), got {self.block_size}"
            )
        SnapshotPolicy.parse(self.snapshots)  # raises ValueError with the accepted forms
        if self.l1_mb < 0 or self.l2_mb < 0:
            raise ValueError("--prefix-l1-mb and --prefix-l2-mb must be >= 0")
        if self.l3 and not self.redis_url:
            raise ValueError("--prefix-l3 on needs --redis-url")
        if self.index_ttl_s < 1 or self.l3_ttl_s < 1:
            raise ValueError("--prefix-index-ttl-s and --prefix-l3-ttl-s must be >= 1")
        if self.redis_timeout_s <= 0:
            raise ValueError("--redis-timeout-s must be > 0")

    @property
    def policy(self) -> SnapshotPolicy:
        return SnapshotPolicy.parse(self.snapshots)


def _env(name: str, default: str) -> str:
    return os.environ.get(f"DUET_{name}", default)


def _on_off(text: str) -> bool:
    value = text.strip().lower()
    if value in ("on", "1", "true", "yes"):
        return True
    if value in ("off", "0", "false", "no", ""):
        return False
    raise argparse.ArgumentTypeError(f"expected on or off, got {text!r}")


def add_redis_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--redis-url",
        default=os.environ.get("DUET_REDIS_URL"),
        help="Redis for the prefix index (and L3): redis://, rediss:// or unix:// "
        "(env DUET_REDIS_URL); omit: the cache stays local and the router cannot see it",
    )
    p.add_argument(
        "--redis-password",
        default=os.environ.get("DUET_REDIS_PASSWORD"),
        help="Redis password (env DUET_REDIS_PASSWORD); one in the URL wins",
    )
    p.add_argument(
        "--redis-cluster",
        type=_on_off,
        metavar="{on,off}",
        default=_on_off(_env("REDIS_CLUSTER", "off")),
        help="the URL names a Redis Cluster node (env DUET_REDIS_CLUSTER, default off)",
    )


def add_prefix_args(p: argparse.ArgumentParser) -> None:
    """Prefix-cache flags (prefill worker; the decode worker accepts and ignores them)."""
    add_redis_args(p)
    p.add_argument(
        "--prefix-cache",
        type=_on_off,
        metavar="{on,off}",
        default=_on_off(_env("PREFIX_CACHE", "on")),
        help="cache prompt prefixes on the prefill worker (env DUET_PREFIX_CACHE, default on)",
    )
    p.add_argument(
        "--prefix-block-size",
        type=int,
        default=int(_env("PREFIX_BLOCK_SIZE", "64")),
        help=f"tokens per cached block, a multiple of {LIGHTNING_CHUNK} (default: %(default)s)",
    )
    p.add_argument(
        "--prefix-snapshots",
        default=_env("PREFIX_SNAPSHOTS", "every:4"),
        help="block ends that keep a Lightning state snapshot (a prefix resumes only there): "
        "every, every:K (plus each prompt's last full block) or last (default: %(default)s)",
    )
    p.add_argument(
        "--prefix-l1-mb",
        type=int,
        default=int(_env("PREFIX_L1_MB", "1024")),
        help="L1 (device memory) budget in MiB (default: %(default)s)",
    )
    p.add_argument(
        "--prefix-l2-mb",
        type=int,
        default=int(_env("PREFIX_L2_MB", "4096")),
        help="L2 (host memory) budget in MiB (default: %(default)s)",
    )
    p.add_argument(
        "--prefix-l3",
        type=_on_off,
        metavar="{on,off}",
        default=_on_off(_env("PREFIX_L3", "off")),
        help="also keep blocks in Redis so any worker can load them (env DUET_PREFIX_L3)",
    )
    p.add_argument(
        "--prefix-l3-ttl-s",
        type=float,
        default=float(_env("PREFIX_L3_TTL_S", "3600")),
        help="seconds an unread L3 block lives in Redis (default: %(default)s)",
    )
    p.add_argument(
        "--prefix-index-ttl-s",
        type=float,
        default=float(_env("PREFIX_INDEX_TTL_S", "300")),
        help="seconds an index entry lives unless republished (default: %(default)s)",
    )


def prefix_config_from_args(args: argparse.Namespace) -> PrefixCacheConfig:
    return PrefixCacheConfig(
        enabled=args.prefix_cache,
        block_size=args.prefix_block_size,
        snapshots=args.prefix_snapshots,
        l1_mb=args.prefix_l1_mb,
        l2_mb=args.prefix_l2_mb,
        l3=args.prefix_l3,
        l3_ttl_s=args.prefix_l3_ttl_s,
        redis_url=args.redis_url,
        redis_password=args.redis_password,
        redis_cluster=args.redis_cluster,
        index_ttl_s=args.prefix_index_ttl_s,
    )
