"""Pack tokenised examples into rows without letting them attend to each other.

Position ids alone do not isolate packed examples: under SDPA and eager attention a
causal mask still lets an example see the one packed before it. honed therefore builds
an explicit block-diagonal causal mask (4D, boolean, True = may attend) and restarts
position ids at every example. Pad slots attend only to themselves so that no mask row
is empty (an empty row turns softmax into NaN).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from honed.data.tokenization import IGNORE, Example

if TYPE_CHECKING:
    import torch


@dataclass
class PackedBatch:
    """Tensors for one micro-batch, plus the counts the loss and throughput need."""

    input_ids: torch.Tensor  # [rows, length]
    targets: torch.Tensor  # [rows, length], IGNORE where no loss is taken
    position_ids: torch.Tensor  # [rows, length]
    attention_mask: torch.Tensor  # [rows, 1, length, length] bool
    n_targets: int
    n_tokens: int  # real (non-pad) tokens

    def to(self, device) -> PackedBatch:
        return PackedBatch(
            self.input_ids.to(device), self.targets.to(device), self.position_ids.to(device),
            self.attention_mask.to(device), self.n_targets, self.n_tokens,
        )


def assign_rows(lengths: list[int], max_len: int, pack: bool) -> list[list[int]]:
    """Group example indices into rows of at most ``max_len`` tokens.

    First-fit decreasing: few rows, little padding. The order inside the result is
    deterministic for given lengths. Without packing every example is its own row.
    """
    # Rows no longer than the longest example: attention cost grows with the square of
    # the row length, so filling rows up to max_seq_len with short examples would cost
    # more than the padding it saves.
    max_len = min(max_len, max(lengths, default=0))
    if not pack:
        return [[i] for i in range(len(lengths))]
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda k: (-lengths[k], k)):
        for r, free in enumerate(room):
            if lengths[i] <= free:
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(max_len - lengths[i])
    return rows


def pack_batch(examples: list[Example], max_len: int, pad_id: int, pack: bool = True) -> PackedBatch:
    """Build the tensors of one micro-batch from ``examples``."""
    import torch

    rows = assign_rows([len(e.input_ids) for e in examples], max_len, pack)
    width = max(sum(len(examples[i].input_ids) for i in row) for row in rows)
    n = len(rows)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    targets = torch.full((n, width), IGNORE, dtype=torch.long)
    position_ids = torch.zeros((n, width), dtype=torch.long)
    segment = torch.full((n, width), -1, dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for s, i in enumerate(row):
            ex = examples[i]
            k = len(ex.input_ids)
            input_ids[r, at : at + k] = torch.tensor(ex.input_ids)
            targets[r, at : at + k] = torch.tensor(ex.targets)
            position_ids[r, at : at + k] = torch.arange(k)
            segment[r, at : at + k] = s
            at += k
    causal = torch.tril(torch.ones(width, width, dtype=torch.bool))
    same = segment[:, :, None] == segment[:, None, :]
    real = (segment >= 0)[:, :, None]
    mask = (same & causal & real) | torch.eye(width, dtype=torch.bool)
    n_tokens = sum(len(e.input_ids) for e in examples)
    n_targets = int((targets != IGNORE).sum())
    return PackedBatch(input_ids, targets, position_ids, mask[:, None], n_targets, n_tokens)
