"""Conversions between protobuf messages and engine values, with INVALID_ARGUMENT-worthy
errors raised as ValueError."""

from __future__ import annotations

from duet.v1 import worker_pb2 as pb
from engine.sampling import SamplingError, SamplingParams
from engine.transfer.base import TransferDescriptor


def sampling_from_pb(m: pb.SamplingParams) -> SamplingParams:
    try:
        return SamplingParams(
            max_tokens=m.max_tokens or 16,
            temperature=m.temperature,
            top_k=m.top_k,
            top_p=m.top_p or 1.0,
            seed=m.seed if m.HasField("seed") else None,
            stop_token_ids=tuple(m.stop_token_ids),
            stop=tuple(m.stop),
            ignore_eos=m.ignore_eos,
            min_tokens=m.min_tokens,
            logprobs=m.logprobs if m.HasField("logprobs") else None,
        )
    except SamplingError as exc:
        raise ValueError(str(exc)) from exc


def sampling_to_pb(p: SamplingParams) -> pb.SamplingParams:
    m = pb.SamplingParams(
        max_tokens=p.max_tokens,
        temperature=p.temperature,
        top_k=p.top_k,
        top_p=p.top_p,
        stop_token_ids=list(p.stop_token_ids),
        stop=list(p.stop),
        ignore_eos=p.ignore_eos,
        min_tokens=p.min_tokens,
    )
    if p.seed is not None:
        m.seed = p.seed
    if p.logprobs is not None:
        m.logprobs = p.logprobs
    return m


def descriptor_from_pb(m: pb.TransferDescriptor) -> TransferDescriptor:
    if not m.backend or not m.request_id or not m.token:
        raise ValueError("destination descriptor is incomplete")
    return TransferDescriptor(m.backend, m.host, m.port, m.request_id, m.lease_epoch, m.token)


def descriptor_to_pb(d: TransferDescriptor) -> pb.TransferDescriptor:
    return pb.TransferDescriptor(
        backend=d.backend,
        host=d.host,
        port=d.port,
        request_id=d.request_id,
        lease_epoch=d.lease_epoch,
        token=d.token,
    )
