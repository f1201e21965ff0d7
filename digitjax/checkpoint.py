"""A run's checkpoints: one long-lived orbax CheckpointManager per run.

Checkpoints live in `<workdir>/checkpoints/<step>/` with two items: the train state
and a JSON record (epoch, position in the epoch, metrics, input shape, class names,
normalisation). Epoch-end checkpoints carry the score {"score": validation accuracy,
or the epoch when there is no validation}; mid-epoch ones (preemption,
`config.checkpoint_every_steps`) carry none. Orbax's own preservation policies keep
the newest `keep` checkpoints and the best epoch-end one, and its `best_step` names
the checkpoint prediction uses. Orbax writes each step into a temporary folder and
renames it when complete, so a crash mid-save leaves the earlier ones intact; a
checkpoint damaged later (a truncated file, a deleted `_METADATA`) is skipped with a
warning and the previous good one restored.

Workdirs written before this layout (`checkpoints/latest/`, `checkpoints/best/`,
one step each) are read for prediction; resuming them is refused with a message.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import sys
from collections.abc import Iterable
from typing import Any

import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from digitjax.errors import UserError

LEGACY_LATEST, LEGACY_BEST = "latest", "best"


def _score(metrics: dict) -> float:
    return metrics["score"]


class Checkpoints:
    """The checkpoints of one workdir (`create=False`: read only, for prediction)."""

    def __init__(self, workdir: epath.PathLike, keep: int = 2, create: bool = True,
                 async_save: bool = True):
        workdir = epath.Path(workdir)
        if "://" not in str(workdir):  # orbax takes absolute paths only
            workdir = workdir.absolute()
        self.directory = workdir / "checkpoints"
        self.legacy = (self.directory / LEGACY_LATEST).is_dir()
        policy = pp.AnyPreservationPolicy([
            pp.LatestN(n=keep),
            pp.BestN(get_metric_fn=_score, n=1, keep_checkpoints_without_metrics=False)])
        options = ocp.CheckpointManagerOptions(
            create=create and not self.legacy, read_only=not create,
            enable_async_checkpointing=async_save, preservation_policy=policy,
            best_fn=_score, best_mode="max", cleanup_tmp_directories=create)
        self._manager = None
        if not self.legacy and (create or self.directory.is_dir()):
            self._manager = ocp.CheckpointManager(self.directory, options=options,
                                                  item_names=("state", "meta"))

    # --- what is there -----------------------------------------------------------

    def steps(self) -> list[int]:
        return list(self._manager.all_steps()) if self._manager else []

    def latest_step(self) -> int | None:
        return self._manager.latest_step() if self._manager else None

    def best_steps(self) -> list[int]:
        """The epoch-end checkpoints, best score first (ties: the earlier step first)."""
        if not self._manager:
            return []
        scored = [(m["score"], -s) for s in self.steps() if (m := self._manager.metrics(s))]
        return [-s for _, s in sorted(scored, reverse=True)]

    def best_step(self) -> int | None:
        return next(iter(self.best_steps()), None)

    # --- writing -----------------------------------------------------------------

    def save(self, step: int, state: Any, meta: dict, score: float | None) -> None:
        """Starts saving `state` and `meta` at `step` (asynchronously where enabled)."""
        self._manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                    meta=ocp.args.JsonSave(meta)),
            metrics=None if score is None else {"score": float(score)},
            force=True)

    def wait(self) -> None:
        """Blocks until every started save is complete on disk."""
        if self._manager:
            self._manager.wait_until_finished()

    def close(self) -> None:
        if self._manager:
            self._manager.close()

    # --- reading -----------------------------------------------------------------

    def read_meta(self, step: int) -> dict:
        restored = self._manager.restore(
            step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(restored.meta)

    def restore(self, template: Any, steps: Iterable[int], quarantine: bool = False
                ) -> tuple[Any, dict] | None:
        """(state, meta) of the first of `steps` that restores, arrays placed like
        `template`; a damaged one is reported (and with `quarantine` moved to
        `checkpoints-damaged/`, so a resumed run can write that step again)."""
        for step in steps:
            try:
                with _quiet_absl():  # orbax logs the failure at length; we say it in a line
                    restored = self._manager.restore(
                        step, args=ocp.args.Composite(
                            state=ocp.args.StandardRestore(template),
                            meta=ocp.args.JsonRestore()))
                return restored.state, dict(restored.meta)
            except Exception as e:  # noqa: BLE001 - any failure to read means damaged
                first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
                print(f"warning: checkpoint {self.directory / str(step)} cannot be read "
                      f"({type(e).__name__}: {first}); trying the one before it",
                      file=sys.stderr)
                _collect_quietly()  # the failed read's coroutines, without their noise
                if quarantine:
                    self._quarantine(step)
        return None

    def _quarantine(self, step: int) -> None:
        aside = self.directory.parent / "checkpoints-damaged"
        aside.mkdir(parents=True, exist_ok=True)
        (self.directory / str(step)).rename(aside / str(step))
        self._manager.reload()

    def restore_latest(self, template: Any) -> tuple[Any, dict] | None:
        """The newest readable checkpoint, for resuming; None when there is none."""
        if self.legacy:
            raise UserError(
                f"{self.directory}: written by an earlier digitjax (checkpoints/latest and "
                "checkpoints/best), which cannot resume in this version; --mode=predict "
                "still reads it; to train on, use a new --workdir")
        return self.restore(template, sorted(self.steps(), reverse=True), quarantine=True)

    def restore_for_prediction(self, template: Any) -> tuple[Any, dict]:
        """The best epoch-end checkpoint (the next best if it is damaged; the newest
        when none has a score)."""
        if self.legacy:
            return _restore_legacy(self.directory, template)
        order = self.best_steps() or sorted(self.steps(), reverse=True)
        restored = self.restore(template, order) if order else None
        if restored is None:
            raise UserError(f"{self.directory.parent}: no checkpoint to predict with "
                            "(train first)")
        return restored

    def meta_for_prediction(self) -> dict:
        """The record of the checkpoint prediction would use, without loading arrays."""
        if self.legacy:
            return _legacy_meta(self.directory)
        step = next(iter(self.best_steps()), self.latest_step())
        if step is None:
            raise UserError(f"{self.directory.parent}: no checkpoint to predict with "
                            "(train first)")
        return self.read_meta(step)


def _collect_quietly() -> None:
    """Collects what a failed restore left behind; orbax's unfinished read coroutines
    would otherwise print 'Exception ignored' tracebacks whenever they are freed."""
    hook = sys.unraisablehook
    sys.unraisablehook = lambda args: None
    try:
        gc.collect()
    finally:
        sys.unraisablehook = hook


@contextlib.contextmanager
def _quiet_absl():
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _legacy_manager(directory: epath.Path) -> ocp.CheckpointManager:
    kind = LEGACY_BEST if (directory / LEGACY_BEST).is_dir() else LEGACY_LATEST
    options = ocp.CheckpointManagerOptions(create=False, read_only=True,
                                           enable_async_checkpointing=False)
    return ocp.CheckpointManager(directory / kind, options=options,
                                 item_names=("state", "meta"))


def _legacy_meta(directory: epath.Path) -> dict:
    with _legacy_manager(directory) as mgr:
        return dict(mgr.restore(mgr.latest_step(), args=ocp.args.Composite(
            meta=ocp.args.JsonRestore())).meta)


def _restore_legacy(directory: epath.Path, template: Any) -> tuple[Any, dict]:
    with _legacy_manager(directory) as mgr:
        restored = mgr.restore(mgr.latest_step(), args=ocp.args.Composite(
            state=ocp.args.StandardRestore(template), meta=ocp.args.JsonRestore()))
    return restored.state, dict(restored.meta)


def latest_meta(workdir: epath.PathLike) -> dict | None:
    """The record of the newest checkpoint in `workdir` (None: none yet), read only."""
    ckpts = Checkpoints(workdir, create=False)
    try:
        step = ckpts.latest_step()
        return None if step is None else ckpts.read_meta(step)
    finally:
        ckpts.close()


def load(workdir: epath.PathLike, template_fn, which: str = "best") -> tuple[Any, dict]:
    """(state, meta) of the `which` ("best" or "latest") checkpoint of `workdir`, read
    only; `template_fn(meta)` makes the state its arrays are placed like."""
    ckpts = Checkpoints(workdir, create=False)
    try:
        if which == "best":
            return ckpts.restore_for_prediction(template_fn(ckpts.meta_for_prediction()))
        step = ckpts.latest_step()
        if step is None:
            raise UserError(f"{workdir}: no checkpoint (train first)")
        restored = ckpts.restore(template_fn(ckpts.read_meta(step)),
                                 sorted(ckpts.steps(), reverse=True))
        if restored is None:
            raise UserError(f"{ckpts.directory}: no readable checkpoint")
        return restored
    finally:
        ckpts.close()


def listing(workdir: epath.PathLike) -> list[dict]:
    """The newest and the best checkpoint of `workdir` (read only; [] when none):
    kind, path, epoch, step and validation accuracy from each one's record."""
    ckpts = Checkpoints(workdir, create=False)
    try:
        if ckpts.legacy:
            meta = _legacy_meta(ckpts.directory)  # one read: the record holds both fields
            return [{"kind": "latest (older layout)", "path": str(ckpts.directory / LEGACY_LATEST),
                     "epoch": meta.get("epoch"), "step": meta.get("step")}]
        found = []
        for kind, step in (("latest", ckpts.latest_step()), ("best", ckpts.best_step())):
            if step is not None:
                meta = ckpts.read_meta(step)
                found.append({"kind": kind, "path": str(ckpts.directory / str(step)),
                              "epoch": meta.get("epoch"), "step": step,
                              "val_accuracy": meta.get("val_accuracy")})
        return found
    finally:
        ckpts.close()
