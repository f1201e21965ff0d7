"""A config's variants out of fold, paired on the same rows (by default how short
`configs/quick.py` can be).

    python experiments/quick_folds.py [--variants shipped,7x128,...] [--folds 4]
    python experiments/quick_folds.py --config configs/best.py --out strided_batch_folds \
        --common=--config.num_epochs=10 \
        --variant "b128=" --variant "b64=--config.batch_size=64"
    python experiments/quick_folds.py --config configs/best.py --train_folds 1 \
        --against experiments/results/members/strided_24ep_4folds.npz \
        --common=--config.num_epochs=24 --variant "elastic12=--config.augment.elastic_alpha=12"

Each variant (the config with a few overrides) trains on the k folds of
`config.num_folds`; each fold's last checkpoint predicts its held-out rows, so every one
of the 42,000 training digits is predicted once by a model that never saw it. Prints
each variant's out-of-fold accuracy with its 95% interval, its median epoch time, and
McNemar's exact test against the first variant on the same digits; writes
results/<out>.md. The runs go to runs/<out>/<variant>/fold<i>: a fold trained before
resumes or says it is trained. About 4-7 minutes a quick.py variant on a 2-core CPU.

To screen a variant of a long run for a k-th of the time: `--train_folds N` trains
folds 0..N-1 only and scores every variant on those folds' held-out digits (10,500 per
fold of 4: +-0.13 pp at 99.5%, against +-0.07 over all 42,000); `--against` puts archived
members (experiments/results/members/*.npz, from recipes.py ensemble) first, scored on
the same digits, so the baseline need not be trained again. An archive must come from
the same partition (num_folds, split_seed): its fold of each digit is checked.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
from pathlib import Path

import numpy as np
from common import REPO, markdown_table, train_folds, write_results

from digitjax import ensemble, scores
from digitjax.errors import UserError

# quick.py's variant name -> its overrides ("EPOCHSxBATCH"); the first is the baseline.
VARIANTS = {
    "shipped": [],
    "7x128": ["--config.num_epochs=7", "--config.batch_size=128"],
    "5x128": ["--config.num_epochs=5", "--config.batch_size=128"],
    "4x128": ["--config.num_epochs=4", "--config.batch_size=128"],
    "5x64": ["--config.num_epochs=5"],
    "3x64": ["--config.num_epochs=3"],
    "4x64-no-bn": ["--config.cnn.batch_norm=false"],
}
COLUMNS = ["variant", "overrides", "oof_accuracy", "interval_95", "errors",
           "epoch_seconds", "vs_first"]


def parse_variants(a: argparse.Namespace) -> dict[str, list[str]]:
    """`--variant NAME=OVERRIDES` (repeated) if given, else quick.py's by name."""
    if a.variant:
        pairs = [v.partition("=") for v in a.variant]
        bad = [v for v, (name, eq, _) in zip(a.variant, pairs, strict=True) if not name or not eq]
        if bad:
            raise SystemExit(f"--variant: expected NAME=OVERRIDES, got {bad}")
        names = [name for name, _, _ in pairs]
        if len(set(names)) < len(names):
            raise SystemExit(f"--variant: a name given twice in {names}")
        return {name: shlex.split(rest) for name, _, rest in pairs}
    if a.config != "configs/quick.py":
        raise SystemExit("--variants names configs/quick.py's variants; for "
                         f"{a.config} give --variant NAME=OVERRIDES")
    names = ["shipped"] + [n for n in a.variants.split(",") if n != "shipped"]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"--variants: unknown {unknown}; expected names from "
                         f"{', '.join(VARIANTS)}")
    return {n: VARIANTS[n] for n in names}


def fold_scores(member: Path, first: int) -> tuple[np.ndarray, ...]:
    """(rows, fold, labels, right) of the member's fold runs' held-out digits, in row
    order: every training row (checked) if `first` is 0, else those of folds 0..first-1."""
    if not first:
        probs, labels, fold = ensemble.out_of_fold(member)
        rows = np.arange(len(labels))
    else:
        rows, probs, labels, fold = ensemble.in_row_order(
            ensemble.fold_predictions(member, first)[1])
    return rows, fold, labels, probs.argmax(1) == labels


def archived(path: str, rows: np.ndarray, fold: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Which of `rows` an archived member gets right, once its partition is checked."""
    try:
        m = ensemble.load_member(Path(path))
    except UserError as e:
        raise SystemExit(f"--against: {e}") from None
    if len(m.labels) <= rows.max() or not (np.array_equal(m.fold[rows], fold)
                                           and np.array_equal(m.labels[rows], labels)):
        raise SystemExit(f"--against: {path} was not trained on these runs' folds (another "
                         "num_folds, split_seed or data)")
    return m.probs[rows].argmax(1) == labels


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/quick.py",
                    help="relative to the repository root (digitjax.main runs there)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="quick.py's, by name")
    ap.add_argument("--variant", action="append", default=[],
                    help="NAME=OVERRIDES (shell words), repeated; replaces --variants")
    ap.add_argument("--common", default="",
                    help="overrides every variant gets; --common='--config.x=1 ...'")
    ap.add_argument("--folds", type=int, default=4)
    ap.add_argument("--train_folds", type=int, default=0,
                    help="train and score folds 0..N-1 only (0: all --folds)")
    ap.add_argument("--against", default="",
                    help="archived members (.npz, commas) to score first, on the same digits")
    ap.add_argument("--runs", default="", help="default runs/<out>")
    ap.add_argument("--out", default="quick_folds", help="experiments/results/<out>.md")
    a = ap.parse_args()
    if not 0 <= a.train_folds <= a.folds:
        raise SystemExit(f"--train_folds: expected 0..{a.folds} (--folds), got {a.train_folds}")
    first_folds = 0 if a.train_folds == a.folds else a.train_folds  # 0: all, checked
    against = [p for p in a.against.split(",") if p]
    variants = parse_variants(a)
    clash = {Path(p).stem for p in against} & set(variants)
    if clash or len({Path(p).stem for p in against}) < len(against):
        raise SystemExit(f"--against: archive names must differ from each other and from the "
                         f"variants' ({sorted(clash) or 'an archive twice'})")
    runs = Path(a.runs).resolve() if a.runs else REPO / "runs" / a.out
    right, rows, scored = {}, [], None
    for name, overrides in variants.items():
        member = runs / name
        train_folds(a.config, member, a.folds, *shlex.split(a.common), *overrides,
                    first=first_folds)
        try:
            scored_rows, fold, labels, right[name] = fold_scores(member, first_folds)
        except UserError as e:
            raise SystemExit(str(e)) from None
        if scored is None:  # the archives' partition is checked once the first folds exist
            scored = (scored_rows, fold, labels)
            right.update({Path(p).stem: archived(p, *scored) for p in against})
        elif not (np.array_equal(scored_rows, scored[0]) and np.array_equal(fold, scored[1])):
            raise SystemExit(f"--variant {name}: its folds hold other digits than the first "
                             "variant's (an override of num_folds, split_seed or the data?)")
        records = [json.loads(line) for i in range(first_folds or a.folds)  # the scored folds
                   for line in (member / f"fold{i}" / "metrics.jsonl").read_text().splitlines()]
        seconds = [r["seconds"] for r in records if "resumed_at_batch" not in r]  # whole epochs
        rows.append({"variant": name, "overrides": " ".join(overrides) or "-",
                     "epoch_seconds": statistics.median(seconds)})
    rows = [{"variant": Path(p).stem, "overrides": f"archive {p}", "epoch_seconds": "-"}
            for p in against] + rows
    first = rows[0]["variant"]
    n = len(scored[0])
    for row in rows:
        ok = right[row["variant"]]
        accuracy = float(ok.mean())
        low, high = scores.interval(accuracy, n)
        row.update(oof_accuracy=accuracy, interval_95=f"{low:.4f}-{high:.4f}",
                   errors=int(n - ok.sum()), vs_first="-" if row["variant"] == first else
                   f"p = {ensemble.paired_p(ok, right[first]):.2g}")
    folds = "fold 0" if first_folds == 1 else f"folds 0..{first_folds - 1}"
    where = (f"{n:,} training digits ({a.folds} folds" if not first_folds else
             f"the {n:,} held-out digits of {folds} of {a.folds} (a screening run")
    table = markdown_table(rows, COLUMNS) + (
        f"\nOut of fold over {where}; each fold's model trained on the other folds' rows, "
        "its epochs shorter than a full run's by the same fraction). Common overrides: "
        f"{a.common or '-'}. epoch_seconds: the median fold epoch (noisy: other work on the "
        f"machine moves it). vs_first: McNemar's exact test against {first} on the same "
        "digits.\n")
    command = shlex.join(["python", "experiments/quick_folds.py", *sys.argv[1:]])
    write_results(a.out, f"{a.config}'s variants out of fold", table, command)


if __name__ == "__main__":
    main()
