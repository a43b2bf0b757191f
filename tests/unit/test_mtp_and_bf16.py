"""The MTP layer runs from the main model's hidden states; the bf16 run dtype stays close to
fp32 on every path."""

from __future__ import annotations

from pathlib import Path

import torch

from engine.model.ling import LingModel
from engine.runner import ModelRunner, PrefillItem

PROMPT = [11, 400, 7, 1999, 23, 23, 805, 64, 3, 1200]


def test_mtp_rows_depend_only_on_their_prefix(tiny_model: LingModel) -> None:
    _, hidden = tiny_model.forward_full(PROMPT)
    drafts = tiny_model.mtp_logits_full(PROMPT, hidden)
    assert drafts.shape == (len(PROMPT) - 1, tiny_model.cfg.vocab_size)
    assert torch.isfinite(drafts).all()
    short = PROMPT[:6]
    _, hidden_short = tiny_model.forward_full(short)
    drafts_short = tiny_model.mtp_logits_full(short, hidden_short)
    assert (drafts[:5] - drafts_short).abs().max() < 1e-4
    # The draft really uses the next token: changing token t+1 changes row t.
    changed = [*PROMPT[:5], (PROMPT[5] + 1) % tiny_model.cfg.vocab_size, *PROMPT[6:]]
    _, hidden_changed = tiny_model.forward_full(changed)
    drafts_changed = tiny_model.mtp_logits_full(changed, hidden_changed)
    assert (drafts_changed[4] - drafts[4]).abs().max() > 1e-3


def test_bf16_paths_track_fp32(tiny_model_dir: Path, tiny_model: LingModel) -> None:
    bf16 = LingModel.from_pretrained(tiny_model_dir, dtype=torch.bfloat16)
    assert bf16.layers[0].attn.w_dense.dtype == torch.bfloat16
    full32 = tiny_model.forward_full(PROMPT)[0]
    full16 = bf16.forward_full(PROMPT)[0]
    runner = ModelRunner(bf16, num_pages=8, page_size=16, num_slots=2)
    seq = runner.new_sequence(len(PROMPT))
    try:
        pre = runner.prefill([PrefillItem(seq, PROMPT[:-1])]).logits[0]
        dec = runner.decode([seq], [PROMPT[-1]])[0]
    finally:
        runner.release(seq)
    runner.check_integrity()
    scale = float(full32.abs().max())
    # Within bf16, the cached paths match the full forward closely.
    assert (pre - full16[-2]).abs().max() < 0.03 * scale
    assert (dec - full16[-1]).abs().max() < 0.03 * scale
    # Against fp32 most positions stay close (a flipped expert choice may move a few) and greedy
    # choices agree.
    close = ((full16 - full32).abs().amax(-1) < 0.05 * scale).float().mean()
    assert close >= 0.8
    assert (full16.argmax(-1) == full32.argmax(-1)).float().mean() >= 0.8
