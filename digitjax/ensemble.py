"""Ensembles of trained workdirs, chosen on out-of-fold predictions.

    python -m digitjax.ensemble --members=runs/ens/kernel3,runs/ens/kernel5 \
        --output_dir=runs/ens/ensemble
    python -m digitjax.ensemble --workdirs=runs/a,runs/b --output_dir=runs/ens

`--members`: each member folder holds the k runs of one config over the folds of
`config.num_folds` (`fold0/` ... `fold<k-1>/`: together they predict every training row
once with a model that never saw it: out-of-fold), or their archive as `folds.npz` (see
`--archive_dir`), and optionally runs trained on every row (`full*/`,
`val_fraction=0`, the folds' recipe). A member's test probabilities are the mean of its
`full*` runs, or of its fold runs when it has none. The members' weights are fitted on
the out-of-fold probabilities (the log-likelihood, scipy), and the ensemble's accuracy
is cross-fitted: each fold is scored with weights fitted on the other folds, so the
estimate is not chosen on the rows it is measured on. Every accuracy is printed with
its 95% interval over the 42,000-row training set (about +-0.06 pp at 99.6%).

`--archive_dir=DIR` also writes each member's out-of-fold probabilities, labels, folds,
per-epoch curve and test probabilities to `DIR/<member>.npz` (a few MB): small enough
to keep in git, so members trained in different sessions (or on different machines)
can be ensembled later; `--members` takes such a file in place of a member folder.

`--workdirs`: the mean of the workdirs' test probabilities (and the ensemble's
validation accuracy when they share a validation split); nothing is fitted.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
from absl import app, flags, logging

from digitjax import files, scores
from digitjax.data import Dataset
from digitjax.errors import UserError
from digitjax.predict import write_predictions
from digitjax.workdir import flatten, migrate, read_metrics

_WORKDIRS = flags.DEFINE_list("workdirs", [], "Trained workdirs to average.")
_MEMBERS = flags.DEFINE_list("members", [], "Member folders (fold*/ and full*/ runs) or "
                             "member archives (<name>.npz, from --archive_dir).")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", "runs/ensemble", "Where the ensemble goes.")
_ARCHIVE_DIR = flags.DEFINE_string(
    "archive_dir", "", "Also write each --members member to <dir>/<name>.npz, which "
    "--members takes in place of the member's folder.")


def _npy(path: Path) -> np.ndarray:
    try:
        return np.load(path)
    except (ValueError, OSError, EOFError) as e:
        raise UserError(f"{path}: not a readable .npy array ({str(e).splitlines()[0]})") from None


def _json(path: Path):
    try:
        return json.loads(path.read_text())
    except (ValueError, OSError) as e:
        raise UserError(f"{path}: not readable JSON ({e})") from None


def _check_out_dir(out_dir: Path, runs: list[Path]) -> None:
    """Refuses an output folder that is, or lies inside, one of the runs it reads (it
    would overwrite that run's predictions) or that is a file."""
    out = out_dir.resolve()
    for run in runs:
        if out == run.resolve() or run.resolve() in out.parents:
            raise UserError(f"--output_dir: {out_dir} is inside {run}, whose files it would "
                            "overwrite; choose a folder outside the runs")
    if out.exists() and not out.is_dir():
        raise UserError(f"--output_dir: {out_dir} is a file (expected a folder)")


def _need(w: Path, *names: str) -> None:
    for name in names:
        if not (w / name).is_file():
            raise UserError(f"{w / name}: missing (train that workdir to the end first)")


def _same_test_rows(path: Path, classes: list[str], ids: np.ndarray, ref: Path | str,
                    ref_classes: list[str], ref_ids: np.ndarray) -> None:
    """Refuses, in one line naming `path`, test predictions of other rows (ids compared as
    text, as an archive stores them) or classes than `ref`'s: they cannot be averaged."""
    if classes != ref_classes or not np.array_equal(np.asarray(ids).astype(str),
                                                    np.asarray(ref_ids).astype(str)):
        raise UserError(f"{path}: predicted other test rows or classes than {ref}")


def test_probs(workdirs: list[Path]) -> tuple[np.ndarray, np.ndarray, list[str], bool]:
    """(mean test probabilities, ids, classes, writes a submission) of `workdirs`, which
    must have predicted the same rows with the same classes."""
    for w in workdirs:
        _need(w, "test_probs.npy", "predictions.csv", "classes.json")
    classes = [_json(w / "classes.json") for w in workdirs]
    ids = [pd.read_csv(w / "predictions.csv", usecols=["id"])["id"].to_numpy() for w in workdirs]
    for w, c, i in zip(workdirs[1:], classes[1:], ids[1:], strict=True):
        _same_test_rows(w, c, i, workdirs[0], classes[0], ids[0])
    probs = np.mean([_npy(w / "test_probs.npy") for w in workdirs], axis=0)
    return probs, ids[0], classes[0], (workdirs[0] / "submission.csv").is_file()


def _write(out_dir: Path, probs: np.ndarray, ids: np.ndarray, classes: list[str],
           submission: bool) -> None:
    data = Dataset(images=np.zeros((len(ids), 1, 1, 1), np.uint8), labels=None, ids=ids,
                   class_names=classes, source="ensemble", writes_submission=submission)
    write_predictions(out_dir, data, probs, classes, submission=submission)


def average(workdirs: list[Path], out_dir: Path) -> dict:
    """`--workdirs`: the plain mean of the members' test probabilities."""
    if len(workdirs) < 2:
        raise UserError("--workdirs: expected at least two trained workdirs")
    _check_out_dir(out_dir, workdirs)
    probs, ids, classes, submission = test_probs(workdirs)
    report = {"members": [str(w) for w in workdirs]}
    if all((w / "val_probs.npy").is_file() for w in workdirs):
        labels = [_npy(w / "val_labels.npy") for w in workdirs]
        if all(np.array_equal(x, labels[0]) for x in labels):
            val = [_npy(w / "val_probs.npy") for w in workdirs]
            report["member_val_accuracy"] = [float(np.mean(v.argmax(1) == labels[0])) for v in val]
            report["val_accuracy"] = float(np.mean(np.mean(val, 0).argmax(1) == labels[0]))
            report["val_interval_95"] = scores.interval(report["val_accuracy"], len(labels[0]))
    _write(out_dir, probs, ids, classes, submission)
    files.write_json(out_dir / "summary.json", report)
    return report


def fold_runs(member: Path) -> list[Path]:
    """The member's fold*/ run folders, by name (not its `FOLDS_ARCHIVE` file)."""
    return sorted((p for p in member.glob("fold*") if p.is_dir()), key=lambda p: p.name)


def full_runs(member: Path) -> list[Path]:
    """The member's full*/ run folders (trained on every row), by name."""
    return sorted((p for p in member.glob("full*") if p.is_dir()), key=lambda p: p.name)


def fold_predictions(member: Path, first: int = 0) -> tuple[
        int, list[tuple[int, np.ndarray, np.ndarray, np.ndarray]]]:
    """(k, one (fold, rows, probabilities, labels) per fold run) of the member's fold*/
    runs (fold0/..fold<first - 1>/ only, if `first` is given): folds of one k-fold
    partition (`config.num_folds` = k), none twice. All k of them make `out_of_fold`; a
    screening run reads the first few while later ones may still be training."""
    runs = fold_runs(member)
    if first:
        runs = [member / f"fold{i}" for i in range(first) if (member / f"fold{i}").is_dir()]
    if not runs:
        raise UserError(f"{member}: no fold*/ runs (train the folds of config.num_folds, "
                        f"or put their archive there as {FOLDS_ARCHIVE})")
    parts, ks = [], set()
    for w in runs:
        _need(w, "config.json", "val_probs.npy", "val_labels.npy", "val_rows.npy")
        config = _json(w / "config.json")
        ks.add(config.get("num_folds", 0))
        parts.append((config["fold"], _npy(w / "val_rows.npy"), _npy(w / "val_probs.npy"),
                      _npy(w / "val_labels.npy")))
    k = max(ks)
    folds = sorted(p[0] for p in parts)
    if len(ks) > 1 or len(set(folds)) < len(folds) or not set(folds) <= set(range(k)):
        raise UserError(f"{member}: its fold runs are not folds of one partition (num_folds "
                        f"{sorted(ks)}, folds {folds})")
    return k, parts


def out_of_fold(member: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(probabilities, labels, fold) of every training row, in row order, from the
    member's fold runs; refused unless they are the k folds of one partition."""
    k, parts = fold_predictions(member)
    if k != len(parts):
        raise UserError(f"{member}: num_folds is {k}, but it holds {len(parts)} fold runs")
    rows, probs, labels, fold = in_row_order(parts)
    if not np.array_equal(rows, np.arange(len(rows))):
        raise UserError(f"{member}: the folds' validation rows do not cover the training "
                        "rows once each (different split_seed or data?)")
    return probs, labels, fold


def in_row_order(parts: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]]) -> tuple[
        np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(rows, probabilities, labels, fold) of `fold_predictions`' parts, sorted by row."""
    rows = np.concatenate([r for _, r, _, _ in parts])
    order = np.argsort(rows, kind="stable")
    fold = np.concatenate([np.full(len(r), f) for f, r, _, _ in parts])
    probs = np.concatenate([p for _, _, p, _ in parts]).astype(np.float32)
    labels = np.concatenate([y for _, _, _, y in parts]).astype(np.int64)
    return rows[order], probs[order], labels[order], fold[order]


def by_epoch(member: Path) -> list[float]:
    """The member's out-of-fold accuracy after each epoch, from its fold runs'
    metrics.jsonl: epoch e's correct digits summed over the folds (each fold's count is
    its validation accuracy times its rows), over every row. The curve of one schedule
    (the cosine decays over num_epochs): it says whether the last epochs still gain
    (train more) or have flattened; to choose num_epochs, compare fold runs of each
    length as members, paired."""
    runs = fold_runs(member)
    correct, total = None, 0
    for w in runs:
        n = len(_npy(w / "val_rows.npy"))
        acc = [r["val_accuracy"] for r in read_metrics(w) if "val_accuracy" in r]
        right = np.rint(np.asarray(acc) * n)
        correct = right if correct is None else correct[:len(right)] + right[:len(correct)]
        total += n
    return [] if correct is None else (correct / total).tolist()


@dataclasses.dataclass
class Member:
    """What the ensemble needs of one member: every training row's out-of-fold
    probabilities, labels and fold, its curve by epoch, and its test prediction."""

    name: str
    probs: np.ndarray
    labels: np.ndarray
    fold: np.ndarray
    by_epoch: list[float]
    test_probs: np.ndarray
    test_ids: np.ndarray
    classes: list[str]
    submission: bool  # the test rows are a Kaggle test set (submission.csv written)
    test_from: str  # "full*", "fold*" (the runs the test probabilities are the mean of)
    config: dict  # fold 0's config.json (what the member is: model, epochs, ...)


ARCHIVE_KEYS = ("probs", "labels", "fold", "by_epoch", "test_probs", "test_ids", "meta")


def load_member(path: Path) -> Member:
    """A member folder (fold*/ and full*/ runs, or `FOLDS_ARCHIVE` in place of the fold
    runs) or an archive `save_member` wrote."""
    if path.suffix != ".npz" and not fold_runs(path) and (path / FOLDS_ARCHIVE).is_file():
        return _archived_folds(path)
    if path.suffix == ".npz":
        if not path.is_file():
            raise UserError(f"{path}: missing (expected a member archive written by "
                            "--archive_dir)")
        try:
            with np.load(path, allow_pickle=False) as z:
                a = {k: z[k] for k in ARCHIVE_KEYS}
            meta = json.loads(str(a["meta"]))
            m = Member(path.stem, a["probs"].astype(np.float32), a["labels"], a["fold"],
                       a["by_epoch"].tolist(), a["test_probs"].astype(np.float32),
                       a["test_ids"], meta["classes"], bool(meta["submission"]),
                       meta["test_from"], meta["config"])
        except (ValueError, OSError, EOFError, KeyError, TypeError, zipfile.BadZipFile,
                zlib.error) as e:
            raise UserError(f"{path}: not a member archive written by --archive_dir "
                            f"({str(e).splitlines()[0] if str(e) else type(e).__name__})"
                            ) from None
        n, c = len(m.labels), len(m.classes)
        if (m.probs.shape != (n, c) or m.fold.shape != (n,)
                or m.test_probs.shape != (len(m.test_ids), c)):
            raise UserError(f"{path}: its arrays disagree in shape (probs {m.probs.shape}, "
                            f"labels {m.labels.shape}, fold {m.fold.shape}, test_probs "
                            f"{m.test_probs.shape}, {len(m.test_ids)} test ids, {c} classes)")
        return m
    probs, labels, fold = out_of_fold(path)
    full = full_runs(path)
    test, ids, classes, submission = test_probs(full or fold_runs(path))
    return Member(path.name, probs, labels, fold, by_epoch(path), test, ids, classes,
                  submission, "full*" if full else "fold*", _json(path / "fold0" / "config.json"))


# A member folder may hold its fold runs as one archive (`save_member`'s file) in place of
# fold*/: the fold runs of an earlier session, whose folders are gone, and full*/ runs
# trained since. The out-of-fold predictions (and so the weights) are the archive's, the
# test probabilities the full runs'.
FOLDS_ARCHIVE = "folds.npz"
# What a full run must share with the archived folds for their out-of-fold predictions
# to describe it (besides the model's own settings, config[config["model"]]); seeds, bags,
# folds, paths and what a run prints may differ.
RECIPE_FIELDS = ("model", "num_epochs", "batch_size", "optimizer", "optimizer_kwargs",
                 "learning_rate", "schedule", "schedule_kwargs", "grad_clip_norm",
                 "label_smoothing", "ema_decay", "augment", "dtype", "normalization",
                 "image_size", "resize", "channels", "tta_shifts")


def recipe_differences(folds: dict, run: dict) -> list[str]:
    """The fields of `RECIPE_FIELDS` (and the model's own settings) where the config
    `run` trains another recipe than `folds`, as "field folds-value -> run-value"; both
    read in today's layout (`workdir.migrate`: an older archive's missing fields take the
    values that trained it)."""
    a, b = flatten(migrate(folds)), flatten(migrate(run))
    groups = {*RECIPE_FIELDS, a.get("model")}
    return [f"{k} {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
            if k.split(".")[0] in groups and a.get(k) != b.get(k)]


def _archived_folds(path: Path) -> Member:
    """A member folder whose fold runs are `FOLDS_ARCHIVE`: out of fold from the archive,
    test probabilities from its full*/ runs (or the archive's, with none)."""
    m = dataclasses.replace(load_member(path / FOLDS_ARCHIVE), name=path.name)
    full = full_runs(path)
    if not full:
        return m
    test, ids, classes, submission = test_probs(full)
    _same_test_rows(full[0], classes, ids, f"the folds in {path / FOLDS_ARCHIVE}",
                    m.classes, m.test_ids)
    for w in full:
        differ = recipe_differences(m.config, _json(w / "config.json"))
        if differ:
            raise UserError(f"{w}: trained another recipe than the folds in "
                            f"{path / FOLDS_ARCHIVE} ({'; '.join(differ)}), so their "
                            "out-of-fold predictions do not describe it")
    return dataclasses.replace(m, test_probs=test, test_ids=ids, submission=submission,
                               test_from="full*")


def save_member(m: Member, path: Path) -> Path:
    """`m` as one compressed .npz, written atomically. Probabilities stay float32, so an
    archive scores exactly as its folder (float16 could turn a close top two into a
    tie); ids are saved as numbers or strings (never pickled objects)."""
    meta = json.dumps({"classes": m.classes, "submission": m.submission,
                       "test_from": m.test_from, "config": m.config})
    ids = np.asarray(m.test_ids)
    if ids.dtype == object:
        ids = ids.astype(str)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, probs=m.probs.astype(np.float32), labels=m.labels,
                                fold=m.fold, by_epoch=np.asarray(m.by_epoch, np.float64),
                                test_probs=m.test_probs.astype(np.float32), test_ids=ids,
                                meta=np.asarray(meta))

    try:
        return files.atomic_write(path, write)
    except OSError as e:
        raise UserError(f"--archive_dir: cannot write {path}: {e.strerror or e}") from None


def fit_weights(probs: list[np.ndarray], labels: np.ndarray) -> np.ndarray:
    """Non-negative weights summing to 1 that maximise the log-likelihood of `labels`
    under the weighted mean of `probs` (scipy's L-BFGS over softmax parameters). The
    likelihood, not the accuracy: smooth, and it does not chase a handful of digits."""
    from scipy import optimize, special

    picked = np.stack([p[np.arange(len(labels)), labels] for p in probs], 1).astype(np.float64)

    def nll(theta: np.ndarray) -> float:
        return -np.mean(np.log(picked @ special.softmax(theta) + 1e-12))

    theta = optimize.minimize(nll, np.zeros(len(probs)), method="L-BFGS-B").x
    return special.softmax(theta)


def cross_fitted(probs: list[np.ndarray], labels: np.ndarray, fold: np.ndarray) -> np.ndarray:
    """Whether the weighted ensemble gets each row right, each fold's rows weighted by
    weights fitted on the other folds' rows only."""
    right = np.zeros(len(labels), bool)
    for f in np.unique(fold):
        held = fold == f
        w = fit_weights([p[~held] for p in probs], labels[~held])
        mixed = sum(wi * p[held] for wi, p in zip(w, probs, strict=True))
        right[held] = mixed.argmax(1) == labels[held]
    return right


def paired_p(right: np.ndarray, other: np.ndarray) -> float:
    """McNemar's exact test (scipy) of two classifiers scored on the same rows: the
    two-sided p-value that their accuracies differ only by chance. Paired, it sees far
    smaller differences than the two accuracies' separate intervals."""
    from scipy import stats

    gained, lost = int(np.sum(right & ~other)), int(np.sum(~right & other))
    return 1.0 if gained + lost == 0 else float(stats.binomtest(gained, gained + lost).pvalue)


def _row(name: str, accuracy: float, n: int, **extra) -> dict:
    low, high = scores.interval(accuracy, n)
    return {"name": name, "oof_accuracy": accuracy, "low": low, "high": high, **extra}


def from_members(members: list[Path], out_dir: Path, archive_dir: Path | None = None) -> dict:
    """`--members`: out-of-fold scores of each member and of the ensembles (mean,
    majority vote, fitted weights), and the weighted test prediction."""
    if not members:
        raise UserError("--members: expected member folders holding fold*/ runs, or "
                        "member archives (.npz)")
    _check_out_dir(out_dir, members)
    if archive_dir is not None and archive_dir.exists() and not archive_dir.is_dir():
        raise UserError(f"--archive_dir: {archive_dir} is a file (expected a folder)")
    loaded = [load_member(m) for m in members]
    names = [m.name for m in loaded]
    if archive_dir is not None and len(set(names)) < len(names):
        raise UserError(f"--archive_dir: members {names} share a name, and their archives "
                        "(<name>.npz) would overwrite each other")
    labels, fold = loaded[0].labels, loaded[0].fold
    for path, m in zip(members[1:], loaded[1:], strict=True):
        if not (np.array_equal(m.labels, labels) and np.array_equal(m.fold, fold)):
            raise UserError(f"{path}: its folds are not {members[0]}'s (the members must share "
                            "num_folds and split_seed)")
        _same_test_rows(path, m.classes, m.test_ids, members[0], loaded[0].classes,
                        loaded[0].test_ids)
    probs, n = [m.probs for m in loaded], len(labels)
    rows = [_row(m.name, float(np.mean(m.probs.argmax(1) == labels)), n,
                 test_from=m.test_from, oof_by_epoch=m.by_epoch) for m in loaded]
    weights = fit_weights(probs, labels)
    if len(members) > 1:
        votes = np.stack([p.argmax(1) for p in probs], 1)
        mean = np.mean(probs, 0)
        # a tie goes to the class of the highest mean probability among the tied
        counts = np.stack([(votes == c).sum(1) for c in range(mean.shape[1])], 1)
        vote = np.where(counts == counts.max(1, keepdims=True), mean, -1).argmax(1)
        best = probs[int(np.argmax([r["oof_accuracy"] for r in rows]))].argmax(1) == labels
        fitted = cross_fitted(probs, labels, fold)
        rows += [_row("mean of the members", float(np.mean(mean.argmax(1) == labels)), n,
                      p_vs_best=paired_p(mean.argmax(1) == labels, best)),
                 _row("majority vote", float(np.mean(vote == labels)), n,
                      p_vs_best=paired_p(vote == labels, best)),
                 _row("fitted weights (cross-fitted)", float(np.mean(fitted)), n,
                      p_vs_best=paired_p(fitted, best))]
    first = loaded[0]
    mixed = sum(w * m.test_probs for w, m in zip(weights, loaded, strict=True))
    _write(out_dir, mixed.astype(np.float32), first.test_ids, first.classes, first.submission)
    if archive_dir is not None:
        for m in loaded:
            save_member(m, archive_dir / f"{m.name}.npz")
    wrong = np.stack([p.argmax(1) != labels for p in probs])
    shared = (wrong[:, None] & wrong[None]).sum(-1)  # [i, j]: rows both get wrong
    report = {"members": [str(m) for m in members], "weights": weights.tolist(),
              "oof_rows": n, "results": rows,
              # diversity: an average cannot fix the rows every member gets wrong
              "errors_shared": shared.tolist(), "errors_of_all": int(wrong.all(0).sum())}
    files.write_json(out_dir / "summary.json", report)
    return report


def main(argv: list[str]) -> None:
    logging.set_verbosity(logging.ERROR)  # absl's backend notes; the results are printed
    try:
        if len(argv) > 1:
            raise UserError(f"unexpected arguments {argv[1:]} (flags are --name=value)")
        if _MEMBERS.value and _WORKDIRS.value:
            raise UserError("--members and --workdirs: expected one of them (members: folders "
                            "of fold runs; workdirs: runs to average)")
        if not (_MEMBERS.value or _WORKDIRS.value):
            raise UserError("expected --members=FOLDER,... (k-fold members) or "
                            "--workdirs=RUN,RUN,... (runs to average)")
        if _MEMBERS.value:
            report = from_members([Path(m) for m in _MEMBERS.value], Path(_OUTPUT_DIR.value),
                                  Path(_ARCHIVE_DIR.value) if _ARCHIVE_DIR.value else None)
            for r in report["results"]:
                paired = (f"  (vs the best member: p = {r['p_vs_best']:.2g}, McNemar)"
                          if "p_vs_best" in r else "")
                print(f"{r['name']:<32} out-of-fold "
                      f"{scores.with_interval(r['oof_accuracy'], report['oof_rows'])}{paired}")
            for r in report["results"]:
                if r.get("oof_by_epoch"):
                    curve = r["oof_by_epoch"]
                    print(f"{r['name']:<12} out-of-fold by epoch: "
                          + " ".join(f"{e}:{a:.2%}" for e, a in enumerate(curve, 1))
                          + f"  (best epoch {int(np.argmax(curve)) + 1})")
            names = [r["name"] for r in report["results"][:len(report["members"])]]
            print("weights: " + ", ".join(f"{n} {w:.3f}" for n, w in
                                          zip(names, report["weights"], strict=True)))
            print(f"out-of-fold errors (diagonal) and errors two members share: "
                  f"{report['errors_of_all']} rows wrong in every member")
            for name, row in zip(names, report["errors_shared"], strict=True):
                print(f"  {name:<12}" + "".join(f"{v:>8}" for v in row))
        else:
            report = average([Path(w) for w in _WORKDIRS.value], Path(_OUTPUT_DIR.value))
            print(json.dumps(report, indent=2))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:  # the output folder cannot be written
        print(f"error: cannot write {_OUTPUT_DIR.value}: {e.strerror or e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
