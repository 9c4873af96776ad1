"""What a dataset holds (its kind), and which training objectives can learn from it.

- ``sft``: conversations or plain text, learned by supervised fine-tuning;
- ``preference``: pairs of a chosen and a rejected answer to one prompt (DPO). KTO can
  use them too: a pair gives one desirable and one undesirable example, as TRL's
  ``KTOTrainer`` does with paired data;
- ``unpaired``: single answers labelled desirable or not (thumbs up or down), for KTO.

Every line of one dataset file is of one kind (``honed.data.ingest``), and the store
records it on the dataset. Nothing here imports the store or torch: a job, the CLI and
the trainer can all ask the same question of the same function.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

Kind = Literal["sft", "preference", "unpaired"]
KINDS: tuple[Kind, ...] = ("sft", "preference", "unpaired")
OBJECTIVES = ("sft", "dpo", "kto")

# Which kinds each objective learns from; the order is the one messages name them in.
ACCEPTED_KINDS: dict[str, tuple[Kind, ...]] = {
    "sft": ("sft",),
    "dpo": ("preference",),
    "kto": ("unpaired", "preference"),
}


def batch_kind(objective: str) -> Kind:
    """The kind of dataset a learning batch of ``objective`` is (the first kind it accepts)."""
    return ACCEPTED_KINDS[objective][0]


_HOLDS = {
    "sft": "SFT records (conversations or text)",
    "preference": "preference pairs",
    "unpaired": "unpaired judgements (prompt, completion, label)",
}
_ONE = {
    "sft": "an SFT record",
    "preference": "a preference pair",
    "unpaired": "an unpaired judgement",
}


def describe_kind(kind: str, *, one: bool = False) -> str:
    """What a dataset of ``kind`` holds, in words ("preference pairs"); ``one=True`` names
    a single line of that kind ("a preference pair")."""
    return (_ONE if one else _HOLDS).get(kind, f"records of unknown kind {kind!r}")


def objectives_for(kind: str) -> tuple[str, ...]:
    """The objectives that can learn from a dataset of ``kind`` (none for an unknown kind)."""
    return tuple(objective for objective, kinds in ACCEPTED_KINDS.items() if kind in kinds)


def objective_accepts(objective: str, kind: str, *, dataset: int | str | None = None) -> str | None:
    """None when ``train.objective = objective`` can learn from a dataset of ``kind``;
    otherwise why not, naming both and the setting that would work.

    ``dataset`` (an id or a name) is named in the message when given:
    "dataset 3 holds preference pairs; train.objective = 'sft' cannot use them: set
    train.objective = 'dpo' or 'kto'".
    """
    subject = "the dataset" if dataset is None else f"dataset {dataset}"
    if objective not in ACCEPTED_KINDS:
        return f"train.objective = {objective!r} is not one of {', '.join(OBJECTIVES)}"
    if kind not in KINDS:
        return f"{subject} has kind {kind!r}, which is not one of {', '.join(KINDS)}"
    if kind in ACCEPTED_KINDS[objective]:
        return None
    working = " or ".join(repr(o) for o in objectives_for(kind))
    return (f"{subject} holds {describe_kind(kind)}; train.objective = {objective!r} cannot use them: "
            f"set train.objective = {working}")


def datasets_problem(objective: str, datasets: Iterable[Any]) -> str | None:
    """The first refusal of ``objective_accepts`` over ``datasets`` (objects with ``id``
    and ``kind``, such as the store's DatasetInfo), or None when the objective can use
    them all. For a job: check this before queueing it."""
    for dataset in datasets:
        problem = objective_accepts(objective, dataset.kind, dataset=dataset.id)
        if problem is not None:
            return problem
    return None
