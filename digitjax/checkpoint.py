"""Orbax checkpoints of a run: the latest epoch (for resume) and the best epoch by
validation accuracy (for prediction), each with a JSON record of the run's facts
(epoch, metrics, input shape, class names, normalisation)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp

LATEST, BEST = "latest", "best"


def _manager(workdir: str | os.PathLike, kind: str, create: bool = True) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=1, create=create, enable_async_checkpointing=False
    )
    path = Path(workdir).absolute() / "checkpoints" / kind
    return ocp.CheckpointManager(path, options=options, item_names=("state", "meta"))


def exists(workdir: str | os.PathLike, kind: str = LATEST) -> bool:
    path = Path(workdir) / "checkpoints" / kind
    return path.is_dir() and _manager(workdir, kind, create=False).latest_step() is not None


def save(workdir: str | os.PathLike, state: Any, meta: dict, best: bool) -> None:
    """Saves `state` as the latest checkpoint (and as the best when `best`), keyed by epoch.

    Orbax writes into a temporary folder and renames it, so a crash mid-save
    leaves the previous checkpoint intact.
    """
    kinds = (LATEST, BEST) if best else (LATEST,)
    for kind in kinds:
        with _manager(workdir, kind) as mgr:
            mgr.save(
                meta["epoch"],
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
                ),
                force=True,
            )
            mgr.wait_until_finished()


def read_meta(workdir: str | os.PathLike, kind: str = LATEST) -> dict | None:
    """The JSON record of a checkpoint, without loading any arrays."""
    if not exists(workdir, kind):
        return None
    with _manager(workdir, kind, create=False) as mgr:
        step = mgr.latest_step()
        return dict(mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta)


def restore(workdir: str | os.PathLike, template: Any, kind: str = LATEST) -> tuple[Any, dict]:
    """(state, meta) of a checkpoint, with arrays placed like those of `template`."""
    with _manager(workdir, kind, create=False) as mgr:
        step = mgr.latest_step()
        restored = mgr.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(template), meta=ocp.args.JsonRestore()
            ),
        )
    return restored.state, dict(restored.meta)
