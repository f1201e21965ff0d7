"""A config's variants out of fold, paired on the same rows (by default how short
`configs/quick.py` can be).

    python experiments/quick_folds.py [--variants shipped,7x128,...] [--folds 4]
    python experiments/quick_folds.py --config configs/best.py --out strided_batch_folds \
        --common=--config.num_epochs=10 \
        --variant "b128=" --variant "b64=--config.batch_size=64"

Each variant (the config with a few overrides) trains on the k folds of
`config.num_folds`; each fold's last checkpoint predicts its held-out rows, so every one
of the 42,000 training digits is predicted once by a model that never saw it. Prints
each variant's out-of-fold accuracy with its 95% interval, its median epoch time, and
McNemar's exact test against the first variant on the same digits; writes
results/<out>.md. The runs go to runs/<out>/<variant>/fold<i>: a fold trained before
resumes or says it is trained. About 4-7 minutes a quick.py variant on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
from pathlib import Path

from common import REPO, markdown_table, train_folds, write_results

from digitjax import ensemble, scores

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
    ap.add_argument("--runs", default="", help="default runs/<out>")
    ap.add_argument("--out", default="quick_folds", help="experiments/results/<out>.md")
    a = ap.parse_args()
    variants = parse_variants(a)
    first = next(iter(variants))
    runs = Path(a.runs).resolve() if a.runs else REPO / "runs" / a.out
    right, rows = {}, []
    for name, overrides in variants.items():
        member = runs / name
        train_folds(a.config, member, a.folds, *shlex.split(a.common), *overrides)
        probs, labels, _ = ensemble.out_of_fold(member)
        right[name] = probs.argmax(1) == labels
        n, accuracy = len(labels), float(right[name].mean())
        low, high = scores.interval(accuracy, n)
        records = [json.loads(line) for m in sorted(member.glob("fold*/metrics.jsonl"))
                   for line in m.read_text().splitlines()]
        seconds = [r["seconds"] for r in records if "resumed_at_batch" not in r]  # whole epochs
        rows.append({"variant": name, "overrides": " ".join(overrides) or "-",
                     "oof_accuracy": accuracy, "interval_95": f"{low:.4f}-{high:.4f}",
                     "errors": int(n - right[name].sum()),
                     "epoch_seconds": statistics.median(seconds),
                     "vs_first": "-" if name == first else
                     f"p = {ensemble.paired_p(right[name], right[first]):.2g}"})
    table = markdown_table(rows, COLUMNS) + (
        f"\nOut of fold over {len(labels):,} training digits ({a.folds} folds; each fold's "
        "model trained on the other folds' rows, its epochs shorter than a full run's by the "
        "same fraction). Common overrides: "
        f"{a.common or '-'}. epoch_seconds: the median fold epoch (noisy: other work on the "
        f"machine moves it). vs_first: McNemar's exact test against {first} on the same "
        "digits.\n")
    command = shlex.join(["python", "experiments/quick_folds.py", *sys.argv[1:]])
    write_results(a.out, f"{a.config}'s variants out of fold", table, command)


if __name__ == "__main__":
    main()
