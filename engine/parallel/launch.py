"""Start a tensor-parallel group: the calling process becomes rank 0 (the leader, which serves)
and spawns ranks 1..world-1; every rank loads only its slice of the checkpoint."""

from __future__ import annotations

import logging
import multiprocessing as mp

import torch

from engine.config import load_config
from engine.model.ling import LingModel
from engine.parallel.follower import RankSpec, bind_rank_device, follower_main
from engine.parallel.group import SINGLE, init_dist_group, leader_store
from engine.parallel.rank_link import RankLink
from engine.parallel.sharding import shardability_problems

log = logging.getLogger(__name__)


def load_model_ranks(
    model_dir: str,
    dtype: str,
    device: str,
    world: int,
    timeout_s: float = 120.0,
    load_timeout_s: float = 3600.0,
) -> tuple[LingModel, RankLink | None]:
    """The leader's model slice and its followers (None with world 1).

    `timeout_s` bounds every collective (a lost rank fails a step instead of hanging it);
    `load_timeout_s` bounds how long the followers may take to load their slices."""
    torch_dtype = getattr(torch, dtype)
    problems = shardability_problems(load_config(model_dir), world)
    if problems:
        raise ValueError(f"tensor parallel size {world}: " + "; ".join(problems))
    if world == 1:
        return LingModel.from_pretrained(model_dir, torch_dtype, device, SINGLE), None
    if device.startswith("cuda") and torch.cuda.device_count() < world:
        raise ValueError(
            f"tensor parallel size {world} needs {world} GPUs; {torch.cuda.device_count()} visible"
        )
    store = leader_store(world, load_timeout_s)
    link = _spawn_followers(model_dir, dtype, device, world, store.port, timeout_s)
    try:
        leader_device = bind_rank_device(device, 0, world)
        group = init_dist_group(0, world, store, leader_device, timeout_s)
        model = LingModel.from_pretrained(model_dir, torch_dtype, leader_device, group)
        link.wait_ready(load_timeout_s)
    except BaseException:
        link.close(timeout_s=5.0)
        raise
    log.info("tensor-parallel group of %d ranks ready", world)
    return model, link


def _spawn_followers(
    model_dir: str, dtype: str, device: str, world: int, store_port: int, timeout_s: float
) -> RankLink:
    ctx = mp.get_context("spawn")
    procs, conns = [], []
    for rank in range(1, world):
        spec = RankSpec(model_dir, dtype, device, rank, world, store_port, timeout_s)
        parent, child = ctx.Pipe()
        proc = ctx.Process(
            target=follower_main, args=(spec, child), name=f"duet-tp-rank{rank}", daemon=True
        )
        proc.start()
        child.close()
        procs.append(proc)
        conns.append(parent)
    return RankLink(procs, conns)
