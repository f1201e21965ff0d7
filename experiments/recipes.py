"""One command per result on ../shared/data/digit-recognizer (2-core CPU timings).

    python experiments/recipes.py seed        # the beginner recipe, 3 seeds
    python experiments/recipes.py default     # configs/default.py
    python experiments/recipes.py best        # configs/best.py
    python experiments/recipes.py ensemble    # 4 seeds of configs/best.py, averaged
    python experiments/recipes.py ablation    # default minus one ingredient at a time

Each prints a results table and writes experiments/results/<recipe>.md.
Checkpoints and ensemble members are chosen on the validation split only.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from common import DATA, REPO, markdown_table, run_main, summary, write_results
from last_epochs import last_epoch_results

DIGITS = DATA / "digit-recognizer"
COLUMNS = ["run", "config", "seed", "epochs", "best_val", "last_val", "val_tta", "wall_seconds"]


def train(config: str, workdir: Path, seed: int = 0, *overrides: str) -> dict:
    wall = run_main("--config", config, f"--workdir={workdir}", f"--config.data_dir={DIGITS}",
                    f"--config.seed={seed}", *overrides)
    s = summary(workdir)
    report = json.loads((workdir / "summary.json").read_text())
    return {"config": config + "".join(" " + o for o in overrides), "seed": seed,
            "epochs": s["epochs"], "best_val": report["val_accuracy"], "last_val": s["last_val"],
            "val_tta": report.get("val_accuracy_tta", "-"), "wall_seconds": wall}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("recipe", choices=["seed", "default", "best", "ensemble", "ablation"])
    ap.add_argument("--runs", default=str(REPO / "runs" / "recipes"))
    ap.add_argument("--members", type=int, default=4)
    a = ap.parse_args()
    runs = Path(a.runs) / a.recipe
    rows = []
    if a.recipe == "seed":
        for seed in range(3):
            rows.append({"run": f"seed {seed}",
                         **train("configs/seed.py", runs / f"s{seed}", seed)})
    elif a.recipe in ("default", "best"):
        rows.append({"run": a.recipe, **train(f"configs/{a.recipe}.py", runs / "s0")})
    elif a.recipe == "ensemble":
        members = [runs / f"s{seed}" for seed in range(a.members)]
        for seed, workdir in enumerate(members):
            rows.append({"run": f"member {seed}", **train("configs/best.py", workdir, seed)})
        subprocess.run([sys.executable, "-m", "digitjax.ensemble",
                        f"--workdirs={','.join(map(str, members))}",
                        f"--output_dir={runs / 'ensemble'}"], cwd=REPO, check=True)
        report = json.loads((runs / "ensemble" / "summary.json").read_text())
        rows.append({"run": "ensemble (mean probabilities)", "config": "configs/best.py",
                     "seed": f"0-{a.members - 1}", "epochs": rows[0]["epochs"],
                     "best_val": report["val_accuracy"], "last_val": "-", "val_tta": "-",
                     "wall_seconds": sum(r["wall_seconds"] for r in rows)})
        rows.append({"run": "ensemble of the last epochs (nothing chosen on validation)",
                     "config": "configs/best.py", "seed": f"0-{a.members - 1}",
                     "epochs": rows[0]["epochs"], "best_val": "-",
                     "last_val": last_epoch_results(members)[1], "val_tta": "-",
                     "wall_seconds": rows[-1]["wall_seconds"]})
    else:
        # TTA changes neither training nor checkpoint choice (both are made without it),
        # so the default run reports it in val_tta instead of training a fifth time.
        variants = {
            "default (val_tta: with 5-shift TTA)": [
                "--config.tta_shifts=((0,0),(1,0),(-1,0),(0,1),(0,-1))"],
            "no augmentation": ["--config.augment.rotation_deg=0", "--config.augment.zoom=0",
                                "--config.augment.shift=0"],
            "no batch norm": ["--config.cnn.batch_norm=false"],
            "constant learning rate": ["--config.schedule=constant", "--config.schedule_kwargs={}",
                                       "--config.learning_rate=1e-3"],
        }
        for i, (name, overrides) in enumerate(variants.items()):
            rows.append({"run": name, **train("configs/default.py", runs / f"v{i}", 0,
                                              *overrides)})
    table = markdown_table(rows, COLUMNS)
    write_results(a.recipe, f"Recipe: {a.recipe}", table, f"python experiments/recipes.py "
                  f"{a.recipe}")


if __name__ == "__main__":
    main()
