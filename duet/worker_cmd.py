"""`duet prefill-worker` and `duet decode-worker`: one worker process each."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

import torch

from engine.worker_config import WorkerConfig, add_worker_args, config_from_args

DESCRIPTIONS = {
    "prefill": "Run a prefill worker: batches prompts up to a token budget, prefills them in "
    "chunks, and streams each layer's MLA latents and final Lightning state to the decode "
    "worker named in each request, then commits with a checksummed manifest.",
    "decode": "Run a decode worker: reserves latent pages and a state slot per request under a "
    "lease, verifies the transferred caches, decodes all committed requests in one continuous "
    "batch, and streams tokens.",
}


def register(sub: argparse._SubParsersAction) -> None:
    for role in ("prefill", "decode"):
        p = sub.add_parser(
            f"{role}-worker", help=f"run a {role} worker", description=DESCRIPTIONS[role]
        )
        add_worker_args(p)
        p.set_defaults(func=run, role=role)


def _check_quantization(model_dir) -> None:  # type: ignore[no-untyped-def]
    """The declared quantization must be what the checkpoint holds (FP8 weights are dequantized
    at load); a mismatch fails the start instead of being ignored."""
    from engine.config import load_config

    quant = os.environ.get("DUET_QUANTIZATION", "none") or "none"
    if quant not in ("none", "fp8"):
        raise ValueError(f"DUET_QUANTIZATION={quant}: supported values are none and fp8")
    declared = load_config(model_dir).raw.get("quantization_config")
    holds = "fp8" if declared else "none"
    if quant != holds:
        raise ValueError(
            f"DUET_QUANTIZATION={quant}, but {model_dir}/config.json declares "
            f"{'an fp8' if declared else 'no'} quantization_config"
        )


def _load_model(cfg: WorkerConfig):  # type: ignore[no-untyped-def]
    """(rank 0's model, the follower ranks or None) once every rank has loaded its slice."""
    from engine.parallel.launch import load_model_ranks

    _check_quantization(cfg.model_dir)

    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but no CUDA device is available")
    if cfg.role == "decode":
        from engine.transfer.select import BackendUnavailable, receiver_backend, require_local

        try:  # a clear error at start-up, never a silent fallback
            require_local(receiver_backend(cfg.transfer_backend))
        except BackendUnavailable as exc:
            raise ValueError(str(exc)) from exc
    return load_model_ranks(
        str(cfg.model_dir), cfg.dtype, cfg.device, cfg.tensor_parallel_size, cfg.tp_timeout_s
    )


def _stop_check_factory(model_dir):  # type: ignore[no-untyped-def]
    """Stop strings on the decode worker need the tokenizer; None when the model has none."""
    from pathlib import Path

    if not (Path(model_dir) / "tokenizer.json").is_file():
        return None
    from engine.detokenizer import IncrementalDetokenizer, StopStringMatcher
    from engine.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_dir(model_dir)

    def make(params):  # type: ignore[no-untyped-def]
        detok, matcher = IncrementalDetokenizer(tokenizer), StopStringMatcher(list(params.stop))
        return lambda token: matcher.feed(detok.add(token)).stopped

    return make, tokenizer


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from engine.parallel.rank_link import RankLost

    try:
        cfg = config_from_args(args.role, args)
        model, ranks = _load_model(cfg)
    except (ValueError, OSError, RankLost) as exc:
        sys.stderr.write(f"duet {args.role}-worker: error: {exc}\n")
        return 2
    if ranks is not None:
        ranks.watch(_rank_lost)
    try:
        if cfg.role == "prefill":
            return _run_prefill(cfg, model, ranks)
        return _run_decode(cfg, model, ranks)
    finally:
        if ranks is not None:
            ranks.close()


def _rank_lost(reason: str) -> None:
    """A tensor-parallel worker missing a rank can compute nothing: exit at once, as a crash,
    so that the gateway fails over its requests and the orchestrator restarts the pod."""
    logging.getLogger("duet.worker").critical("%s; the worker exits", reason)
    logging.shutdown()
    os._exit(70)


def worker_identity(cfg: WorkerConfig, port: int) -> str:
    """The id a worker registers and publishes its prefix blocks under."""
    return cfg.worker_id or f"{cfg.role}-{cfg.advertise_host or cfg.host}-{port}"


def _registration(cfg: WorkerConfig, load, on_bound=None):  # type: ignore[no-untyped-def]
    """Once the port is known: `on_bound(worker_id)`, then registration with the control plane
    when one is configured."""
    from duet.registration import Registration
    from duet.v1 import worker_pb2 as pb

    def make(port: int) -> Registration | None:
        host = cfg.advertise_host or cfg.host
        worker_id = worker_identity(cfg, port)
        if on_bound is not None:
            on_bound(worker_id)
        if not cfg.control_plane:
            return None
        return Registration(
            cfg.control_plane,
            worker_id,
            cfg.role,
            f"{host}:{port}",
            lambda: pb.LoadResponse(role=cfg.role, **load()),
        )  # type: ignore[arg-type]

    return make


def _metrics(cfg: WorkerConfig):  # type: ignore[no-untyped-def]
    from engine.worker_metrics import WorkerMetrics

    metrics = WorkerMetrics(cfg.role)
    metrics.serve(cfg.host, cfg.metrics_port)
    return metrics


def _run_prefill(cfg: WorkerConfig, model, ranks) -> int:  # type: ignore[no-untyped-def]
    from duet.grpc_server import Lifecycle, serve
    from duet.v1 import worker_pb2_grpc as pb_grpc
    from prefill_worker.engine import PrefillEngine
    from prefill_worker.service import PrefillService

    cache = _prefix_cache(cfg, model)
    engine = PrefillEngine(cfg, model, _metrics(cfg), cache, ranks)
    engine.metrics.watch_load(engine.load)

    def add(server) -> str:  # type: ignore[no-untyped-def]
        pb_grpc.add_PrefillWorkerServicer_to_server(PrefillService(engine), server)
        return "duet.v1.PrefillWorker"

    life = Lifecycle(engine.drain, engine.is_idle, engine.close)
    reg = _registration(cfg, engine.load, cache.start_publishing if cache else None)
    info = {"role": "prefill", "prefix_cache": cache is not None}
    asyncio.run(serve([add], cfg.host, cfg.port, info, life, reg, cfg.drain_timeout_s))
    return 0


def _prefix_cache(cfg: WorkerConfig, model):  # type: ignore[no-untyped-def]
    """The prefill worker's prefix cache, or None when --prefix-cache off."""
    if not cfg.prefix.enabled:
        return None
    from prefill_worker.prefix_cache import WorkerPrefixCache

    return WorkerPrefixCache(cfg.prefix, cfg.model_dir, str(model.device))


def _run_decode(cfg: WorkerConfig, model, ranks) -> int:  # type: ignore[no-untyped-def]
    from decode_worker.engine import DecodeEngine
    from decode_worker.service import DecodeService
    from duet.grpc_server import Lifecycle, serve
    from duet.v1 import worker_pb2_grpc as pb_grpc

    found = _stop_check_factory(cfg.model_dir)
    factory, tokenizer = found if found else (None, None)
    eos = model.cfg.eos_token_ids or (tuple(tokenizer.eos_ids) if tokenizer else ())
    engine = DecodeEngine(cfg, model, eos, factory, _metrics(cfg), ranks)
    engine.metrics.watch_load(engine.load)

    def add(server) -> str:  # type: ignore[no-untyped-def]
        pb_grpc.add_DecodeWorkerServicer_to_server(DecodeService(engine), server)
        return "duet.v1.DecodeWorker"

    info = {"role": "decode", "transfer_port": engine.receiver.port}
    life = Lifecycle(engine.drain, engine.is_idle, engine.close)
    reg = _registration(cfg, engine.load) if cfg.control_plane else None
    asyncio.run(serve([add], cfg.host, cfg.port, info, life, reg, cfg.drain_timeout_s))
    return 0
