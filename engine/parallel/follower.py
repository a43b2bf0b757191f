"""A follower rank: loads its slice of the model, then runs each step the leader announces, in
order, until told to stop or until the leader's pipe closes (the leader is gone: so is it)."""

from __future__ import annotations

import logging
import os
import signal
import sys
from dataclasses import dataclass
from multiprocessing.connection import Connection

import torch

from engine.parallel.rank_link import FAILED, READY, STOP

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RankSpec:
    """What a follower needs to start: where the model is and how to reach the group."""

    model_dir: str
    dtype: str
    device: str  # "cpu" or "cuda"; rank r uses cuda:r
    rank: int
    world: int
    store_port: int
    timeout_s: float


def bind_rank_device(device: str, rank: int, world: int) -> str:
    """This process's device for `rank` (cuda:r, or the CPU with a 1/world share of its
    threads), made current; returns its name."""
    if device.startswith("cuda"):
        torch.cuda.set_device(f"cuda:{rank}")
        return f"cuda:{rank}"
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    return device


def follower_main(spec: RankSpec, conn: Connection) -> None:
    """Process entry point (spawned by engine.parallel.launch)."""
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s %(levelname)s tp-rank{spec.rank}: %(message)s"
    )
    for sig in (signal.SIGINT, signal.SIGTERM):  # the leader decides when a rank stops
        signal.signal(sig, signal.SIG_IGN)
    try:
        runner_factory = _load(spec)
    except Exception as exc:
        log.exception("rank %d failed to start", spec.rank)
        conn.send((FAILED, f"{type(exc).__name__}: {exc}"))
        sys.exit(1)
    conn.send((READY, None))
    try:
        _serve(conn, runner_factory)
    except EOFError:
        log.info("leader is gone; rank %d stops", spec.rank)
    except Exception:
        log.exception("rank %d failed; the tensor-parallel worker cannot go on", spec.rank)
        sys.exit(1)


def _load(spec: RankSpec):  # type: ignore[no-untyped-def]
    from engine.model.ling import LingModel
    from engine.parallel.group import follower_store, init_dist_group

    device = bind_rank_device(spec.device, spec.rank, spec.world)
    store = follower_store(spec.store_port, spec.world, spec.timeout_s)
    group = init_dist_group(spec.rank, spec.world, store, device, spec.timeout_s)
    return LingModel.from_pretrained(spec.model_dir, getattr(torch, spec.dtype), device, group)


def _serve(conn: Connection, model) -> None:  # type: ignore[no-untyped-def]
    from engine.runner import ModelRunner

    runner: ModelRunner | None = None
    while True:
        op, payload = conn.recv()
        if op == STOP:
            return
        if op == "runner":
            runner = ModelRunner(model, *payload)
            continue
        if runner is None:
            raise RuntimeError(f"step {op!r} before the runner was set up")
        _dispatch(runner, op, payload)


def _dispatch(runner, op: str, payload) -> None:  # type: ignore[no-untyped-def]
    if op == "forward":
        items, is_decode, gather = payload
        runner.rank_forward(items, is_decode, gather)
    elif op == "load_prefix":
        seq, shape = payload
        latents = torch.empty(shape, dtype=runner.latents.storage.dtype, device=runner.model.device)
        runner.rank_load_prefix(seq, latents, None)
    elif op == "publish":
        runner.rank_publish(payload)
    else:
        raise RuntimeError(f"unknown tensor-parallel step {op!r}")
