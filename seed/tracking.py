"""Experiment trackers (TensorBoard, Weights & Biases) through accelerate's tracker classes.

Distillation logs its per-step loss and learning rate through its ``Accelerator``
(``log_with``, ``init_trackers``, ``log``); ``seed evolve`` logs each round's held-out figures
with :func:`log_once` between trainings, so that no two tracker runs are ever open at once.
Nothing here runs unless a tracker is asked for.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from seed.errors import SeedError
from seed.io import md5_strings

W_AND_B_PROJECT = "seed"


def check_tracker(log_with: str | None) -> None:
    """Refuse, in one line, a tracker whose package is missing (accelerate would drop it silently)."""
    if log_with is None:
        return
    from accelerate.utils import is_tensorboard_available, is_wandb_available

    if not {"tensorboard": is_tensorboard_available, "wandb": is_wandb_available}[log_with]():
        raise SeedError(f"--log-with {log_with} needs the {log_with} package: pip install 'seed-vlm[{log_with}]'")


def tracker_run(log_with: str, run: str) -> tuple[str, dict]:
    """accelerate's project name and init kwargs for a run called ``run``: TensorBoard keeps a
    run in a folder of that name, W&B as a run of that name in project ``seed``."""
    if log_with == "wandb":
        return W_AND_B_PROJECT, {"wandb": {"name": run}}
    return run, {}


def flat_scalars(values: Mapping, prefix: str = "") -> dict[str, float | int | str | bool]:
    """Nested figures as one level of ``a/b/c`` keys, as trackers take them (anything that is
    not a number, bool or string, None included, as its text)."""
    out: dict[str, float | int | str | bool] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flat_scalars(value, name + "/"))
        else:
            out[name] = value if isinstance(value, (bool, int, float, str)) else str(value)
    return out


def log_once(log_with: str, logging_dir: str | Path, run: str, values: Mapping, step: int) -> None:
    """Open the tracker run ``run``, log the numbers among ``values`` (flattened) at ``step``, and
    close it. W&B appends to one run each time (its id is derived from the folder and run name)."""
    from accelerate import PartialState
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    check_tracker(log_with)
    PartialState()  # the trackers log through accelerate's logger, which needs its state
    project, init_kwargs = tracker_run(log_with, run)
    kwargs = init_kwargs.get(log_with, {})
    if log_with == "wandb":
        kwargs = {**kwargs, "id": "seed-" + md5_strings([str(Path(logging_dir).resolve()), run])[:12], "resume": "allow"}
    cls = LOGGER_TYPE_TO_CLASS[log_with]
    tracker = cls(project, logging_dir, **kwargs) if cls.requires_logging_directory else cls(project, **kwargs)
    tracker.start()
    try:
        numbers = {k: v for k, v in flat_scalars(values).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        tracker.log(numbers, step=step)
    finally:
        tracker.finish()
