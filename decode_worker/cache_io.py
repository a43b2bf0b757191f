"""Where a decode request's caches come from: the views a transfer writes into (its pages and
state slot), and the first token's logits (from the transferred hidden state, or from a
prefill run on this worker for local-prefill requests)."""

from __future__ import annotations

import torch

from decode_worker.request import DecodeRequest
from engine.runner import ModelRunner, PrefillItem
from engine.transfer_layout import HIDDEN


def destination_views(
    runner: ModelRunner, req: DecodeRequest, name: str
) -> torch.Tensor | list[torch.Tensor]:
    """The writable views for transfer tensor `name`: a latent layer's rows of each page, one
    state slot's layer, or the hidden-state buffer."""
    if name == HIDDEN:
        return req.hidden
    kind, layer = name.split(".")
    model = runner.model
    if kind == "state":
        return runner.full_states[req.seq.slot, model.linear_index[int(layer)]]
    storage = runner.latents.storage[model.mla_index[int(layer)]]
    ps, n = runner.latents.page_size, len(req.prompt_ids)
    pages = req.seq.pages[: runner.latents.pages_for(n)]
    return [storage[p, : min(ps, n - k * ps)] for k, p in enumerate(pages)]


def first_logits(
    runner: ModelRunner, admitted: list[DecodeRequest], prefill_chunk: int
) -> list[torch.Tensor]:
    """Logits of each admitted request's first token, in order."""
    local = [r for r in admitted if r.local_prefill]
    rows: dict[str, torch.Tensor] = {}
    if local:
        items = [PrefillItem(r.seq, r.prompt_ids) for r in local]
        out = runner.prefill_chunked(items, prefill_chunk)
        rows = {r.request_id: out.logits[b] for b, r in enumerate(local)}
    remote = [r for r in admitted if not r.local_prefill]
    runner.publish([r.seq for r in remote])
    if remote:
        logits = runner.model.logits(torch.stack([r.hidden for r in remote]))
        rows |= {r.request_id: logits[b] for b, r in enumerate(remote)}
    return [rows[r.request_id] for r in admitted]
