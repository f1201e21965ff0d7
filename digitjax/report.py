"""`--mode=report`: one self-contained HTML page per trained workdir (`report.html`: config,
data, model, learning curves, confusion matrix, worst mistakes, per-class table,
timings, checkpoints), or several runs side by side (`comparison.html`). Images are
embedded, so the file works wherever it is copied. Made from the workdir's files,
never during training (Jinja2 templates).
"""

from __future__ import annotations

import base64
import datetime
import json
import os
from dataclasses import dataclass, field

import jinja2
import ml_collections
from etils import epath

from digitjax import checkpoint, files, model_summary, parallel, plots, scores
from digitjax.errors import UserError
from digitjax.workdir import RUN_INFO, flatten, read_metrics, saved_config

REPORT, COMPARISON = "report.html", "comparison.html"


@dataclass
class Run:
    """What a trained workdir holds, read from its files."""

    workdir: epath.Path
    config: dict
    history: list[dict]
    class_names: list[str]
    summary: dict = field(default_factory=dict)  # summary.json: the best checkpoint on val
    info: dict = field(default_factory=dict)  # run_info.json: data and model summaries

    @property
    def name(self) -> str:
        return self.workdir.name or str(self.workdir)

    @property
    def best(self) -> tuple[float | None, int | None]:
        """(validation accuracy, epoch) of the best checkpoint."""
        if "val_accuracy" in self.summary:
            return self.summary["val_accuracy"], self.summary.get("best_epoch")
        scored = [r for r in self.history if "val_accuracy" in r]
        if not scored:
            return None, None
        top = max(scored, key=lambda r: r["val_accuracy"])
        return top["val_accuracy"], top["epoch"]

    @property
    def dataset(self) -> tuple[str, list[str]]:
        """What the run was trained on: its data source and classes."""
        source = self.info.get("data", {}).get("source")
        if source is None:  # trained before run_info.json: the config's data fields
            c = self.config
            source = os.path.join(c.get("data_dir", ""), c.get("train_file", "")) \
                if c.get("data_format", "pixels") == "pixels" else c.get("data_dir", "")
        return source, self.class_names

    def _interval(self, accuracy: float | None) -> str:
        """The Wilson interval of `accuracy` over the validation images, when known."""
        n = self.summary.get("val_count") or self.info.get("data", {}).get("validation")
        if accuracy is None or not n:
            return "-"
        low, high = scores.interval(accuracy, n)
        return f"[{low:.2%}, {high:.2%}] of {n:,}"

    def facts(self) -> dict[str, str]:
        """The headline numbers, as printed in both kinds of report."""
        best, best_epoch = self.best
        last = self.history[-1]
        model = self.info.get("model", {})
        seconds = sum(r["seconds"] for r in self.history)
        images = sum(r["images_per_second"] * r["seconds"] for r in self.history)
        resumed = sum("resumed_at_batch" in r for r in self.history)
        rows = {
            "model": self.config.get("model", "?"),
            "epochs": f"{last['epoch']} of {self.config.get('num_epochs', '?')}",
            "best validation accuracy": "-" if best is None else f"{best:.4%} (epoch {best_epoch})",
            "95% interval": self._interval(best),
            "final validation accuracy": (f"{last['val_accuracy']:.4%}"
                                          if "val_accuracy" in last else "-"),
            "final train accuracy": f"{last['train_accuracy']:.4%}",
            "training time": _duration(seconds) + (
                f" ({resumed} epoch{'s' * (resumed > 1)} resumed mid-way: counted from the "
                "resume)" if resumed else ""),
            "images/s (mean)": f"{images / seconds:,.0f}" if seconds else "-",
        }
        if model:
            rows["parameters"] = f"{model['parameters']:,}"
            rows["MFLOPs per image"] = f"{model['flops_per_image'] / 1e6:,.2f}"
        return rows


def load_run(workdir: epath.PathLike) -> Run:
    """The run in `workdir`; a folder with none is refused in one line."""
    workdir = epath.Path(workdir)
    history = read_metrics(workdir)
    if not (workdir / "config.json").is_file() or not (workdir / "metrics.jsonl").is_file():
        raise UserError(f"{workdir}: no training run here (expected config.json and "
                        "metrics.jsonl from --mode=train)")
    if not history:
        raise UserError(f"{workdir / 'metrics.jsonl'}: no epoch recorded yet (train at least "
                        "one epoch)")

    def read(name: str, default):
        path = workdir / name
        if not path.is_file():
            return default
        try:
            return json.loads(path.read_text())
        except ValueError:
            raise UserError(f"{path}: not readable JSON (a damaged file?)") from None

    config = read("config.json", {})
    return Run(workdir, config, history, read("classes.json", []), read("summary.json", {}),
               read(RUN_INFO, {}))


def write_report(config: ml_collections.ConfigDict, workdir: epath.PathLike,
                 checkpoints: list[dict] | None = None) -> epath.Path | None:
    """`<workdir>/report.html` (process 0; None elsewhere). Embeds the PNGs in
    `<workdir>/plots/`, making any that are missing from the workdir's files.
    `checkpoints`: `checkpoint.listing(workdir)` when the caller has it (orbax reads
    it on every process of a multi-process run together)."""
    run = load_run(workdir)
    figures, note = _figures(config, run.workdir)
    checkpoints = checkpoint.listing(run.workdir) if checkpoints is None else checkpoints
    html = _render(_REPORT, title=f"digitjax report: {run.name}", run=run, figures=figures,
                   note=note,
                   facts=run.facts(), config=flatten(run.config, keep_empty=True),
                   data=run.info.get("data"), model=run.info.get("model"),
                   headline=model_summary.headline(run.info["model"])
                   if "model" in run.info else "", checkpoints=checkpoints,
                   tensorboard=str((run.workdir / "tensorboard").resolve()))
    if not parallel.is_writer():
        return None
    return files.write_text(run.workdir / REPORT, html)


def write_comparison(workdirs: list[epath.PathLike],
                     out_dir: epath.PathLike | None = None) -> epath.Path | None:
    """`comparison.html` in `out_dir` (default: the workdirs' common parent): the runs
    side by side. Runs of different datasets are refused before anything is written."""
    if len(workdirs) < 2:
        raise UserError("--workdirs: expected at least two trained workdirs to compare")
    runs = [load_run(w) for w in workdirs]
    for run in runs[1:]:
        if run.dataset != runs[0].dataset:
            raise UserError(
                f"{run.workdir}: trained on {run.dataset[0]} ({len(run.class_names)} classes), "
                f"not on {runs[0].dataset[0]} ({len(runs[0].class_names)} classes) as "
                f"{runs[0].workdir}; a comparison needs runs of one dataset")
    names = _unique_names(runs)
    configs = [flatten(r.config, keep_empty=True) for r in runs]
    differ = sorted(k for k in set().union(*configs)
                    if len({json.dumps(c.get(k)) for c in configs}) > 1)
    facts = [r.facts() for r in runs]
    per_class = []
    if all(r.summary.get("per_class") for r in runs):
        per_class = [{"class": row["class"],
                      "f1": [r.summary["per_class"][i]["f1"] for r in runs]}
                     for i, row in enumerate(runs[0].summary["per_class"])]
    curves = plots.compare_curves({n: r.history for n, r in zip(names, runs, strict=True)})
    html = _render(_COMPARISON, title=f"digitjax: {len(runs)} runs compared", names=names,
                   runs=runs, facts=facts, fact_names=list(facts[0]),
                   differ=[(k, [c.get(k, "-") for c in configs]) for k in differ],
                   per_class=per_class, curves=_data_uri(curves))
    if not parallel.is_writer():
        return None
    out = epath.Path(out_dir) if out_dir else epath.Path(os.path.commonpath(
        [str(r.workdir.resolve()) for r in runs]))
    return files.write_text(out / COMPARISON, html)


def _figures(config: ml_collections.ConfigDict, workdir: epath.Path) -> tuple[dict[str, str], str]:
    """(data URIs of the run's plots, a note): the PNG files when written, else made now
    from the workdir's files; when the data for that is gone, the note says so."""
    names = [plots.LEARNING_CURVES]
    if (workdir / "val_probs.npy").is_file():
        names += [plots.CONFUSION_MATRIX, plots.MISTAKES]
    saved = {n: workdir / plots.SUBDIR / f"{n}.png" for n in names}
    if all(p.is_file() for p in saved.values()):
        return {n: _data_uri(p.read_bytes()) for n, p in saved.items()}, ""
    try:
        made = plots.run_plots(saved_config(workdir, config), workdir)
    except UserError as e:  # e.g. the data is not on this machine: what the files allow
        made = {plots.LEARNING_CURVES: plots.learning_curves(read_metrics(workdir))}
        return {n: _data_uri(png) for n, png in made.items()}, f"Some plots are missing: {e}"
    return {n: _data_uri(png) for n, png in made.items()}, ""


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _duration(seconds: float) -> str:
    return str(datetime.timedelta(seconds=round(seconds)))


def _unique_names(runs: list[Run]) -> list[str]:
    names = [r.name for r in runs]
    if len(set(names)) == len(names):
        return names
    return [str(r.workdir) for r in runs]


_ENV = jinja2.Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True)


def _render(template: str, **context) -> str:
    context["generated"] = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    return _ENV.from_string(_BASE).render(body=_ENV.from_string(template).render(**context),
                                          **context)


def _format(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | tuple):
        return json.dumps(value)
    return str(value)


_ENV.filters["fmt"] = _format

_BASE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title>
<style>
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", "DejaVu Sans", sans-serif;
       margin: 0 auto; max-width: 1200px; padding: 16px 24px; color: #1d2330; }
h1 { font-size: 22px; margin: 4px 0; } h2 { font-size: 17px; margin: 28px 0 8px;
     border-bottom: 1px solid #d8dde6; padding-bottom: 4px; }
.muted { color: #6b7385; } img { max-width: 100%; border: 1px solid #e3e7ee; }
table { border-collapse: collapse; margin: 6px 0; }
td, th { border: 1px solid #d8dde6; padding: 3px 9px; text-align: left; vertical-align: top; }
th { background: #f2f4f8; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
pre { font: 11px/1.25 "DejaVu Sans Mono", Menlo, Consolas, monospace; background: #f7f8fa;
      padding: 8px; overflow-x: auto; border: 1px solid #e3e7ee; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; margin: 12px 0; }
.card { border: 1px solid #d8dde6; border-radius: 6px; padding: 8px 12px; min-width: 150px; }
.card .v { font-size: 18px; font-weight: 600; } .card .k { color: #6b7385; font-size: 12px; }
.row { display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; }
</style></head>
<body>
<h1>{{ title }}</h1>
<div class="muted">generated {{ generated }} by digitjax</div>
{{ body | safe }}
</body></html>
"""

_REPORT = """
<div class="muted">{{ run.workdir.resolve() }}</div>
<div class="cards">
{% for k, v in facts.items() %}
<div class="card"><div class="k">{{ k }}</div><div class="v">{{ v }}</div></div>
{% endfor %}
</div>

{% if note %}<p class="muted">{{ note }}</p>{% endif %}
<h2>Learning curves</h2>
{% if figures.learning_curves %}<img alt="learning curves" src="{{ figures.learning_curves }}">
{% endif %}

<h2>Validation: best checkpoint</h2>
{% if run.summary.per_class %}
<div class="row">
{% if figures.confusion_matrix %}
<div><img alt="confusion matrix" src="{{ figures.confusion_matrix }}"></div>
{% endif %}
<div>
<table><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>
{% for r in run.summary.per_class %}
<tr><td>{{ r["class"] }}</td><td class="num">{{ "%.4f" % r.precision }}</td>
<td class="num">{{ "%.4f" % r.recall }}</td><td class="num">{{ "%.4f" % r.f1 }}</td>
<td class="num">{{ r.support }}</td></tr>
{% endfor %}
</table>
<div class="muted">macro F1 {{ "%.4f" % run.summary.macro_f1 }};
validation accuracy {{ "%.4f" % run.summary.val_accuracy }}
{% if run.summary.val_accuracy_tta is defined %}
(with test-time augmentation {{ "%.4f" % run.summary.val_accuracy_tta }}){% endif %}</div>
</div></div>
{% elif figures.confusion_matrix %}
<img alt="confusion matrix" src="{{ figures.confusion_matrix }}">
{% else %}<p class="muted">No validation split (config.val_fraction = 0), or the run has not
finished.</p>{% endif %}
{% if figures.val_mistakes %}
<h2>Worst validation mistakes</h2>
<img alt="worst validation mistakes" src="{{ figures.val_mistakes }}">
{% endif %}

<h2>Data</h2>
{% if data %}
<table>
<tr><th>source</th><td>{{ data.source }}</td></tr>
<tr><th>images</th><td>{{ "{:,}".format(data.images) }} of {{ data.image_shape | join("×") }}
({{ "{:,}".format(data.train) }} train, {{ "{:,}".format(data.validation) }} validation)</td></tr>
<tr><th>classes</th><td>{% for c in data.classes %}{{ c }} ({{ data.class_counts[loop.index0] }}){{
 ", " if not loop.last }}{% endfor %}</td></tr>
</table>
{% else %}<p class="muted">Not recorded (run_info.json is written when training starts).</p>
{% endif %}

<h2>Model</h2>
{% if model %}
<p>{{ headline }}</p>
<pre>{{ model.table }}</pre>
{% else %}<p class="muted">Not recorded.</p>{% endif %}

<h2>Timings and metrics per epoch</h2>
<table><tr><th>epoch</th><th>step</th><th>seconds</th><th>images/s</th><th>learning rate</th>
<th>train loss</th><th>train acc</th><th>val loss</th><th>val acc</th></tr>
{% for r in run.history %}
<tr><td class="num">{{ r.epoch }}</td><td class="num">{{ r.step }}</td>
<td class="num">{{ "%.1f" % r.seconds }}{% if r.resumed_at_batch is defined %}
 (from batch {{ r.resumed_at_batch }}){% endif %}</td>
<td class="num">{{ "%.0f" % r.images_per_second }}</td>
<td class="num">{{ r.learning_rate | fmt if r.learning_rate is defined else "-" }}</td>
<td class="num">{{ "%.4f" % r.train_loss }}</td><td class="num">{{ "%.4f" % r.train_accuracy }}</td>
<td class="num">{{ "%.4f" % r.val_loss if r.val_loss is defined else "-" }}</td>
<td class="num">{{ "%.4f" % r.val_accuracy if r.val_accuracy is defined else "-" }}</td></tr>
{% endfor %}
</table>

<h2>Checkpoints and files</h2>
<table>
{% for c in checkpoints %}
<tr><th>{{ c.kind }}</th><td>{{ c.path }}</td><td>epoch {{ c.epoch }}{% if c.val_accuracy
 is not none %}, validation accuracy {{ "%.4f" % c.val_accuracy }}{% endif %}</td></tr>
{% endfor %}
<tr><th>TensorBoard</th><td colspan="2">{{ tensorboard }}
(<code>tensorboard --logdir {{ run.workdir.resolve().parent }}</code>)</td></tr>
</table>

<h2>Config</h2>
<table>
{% for k, v in config.items() %}<tr><th>{{ k }}</th><td>{{ v | fmt }}</td></tr>
{% endfor %}
</table>
"""

_COMPARISON = """
<h2>Runs</h2>
<table>
<tr><th></th>{% for n in names %}<th>{{ n }}</th>{% endfor %}</tr>
<tr><th>workdir</th>{% for r in runs %}<td>{{ r.workdir.resolve() }}</td>{% endfor %}</tr>
{% for k in fact_names %}
<tr><th>{{ k }}</th>{% for f in facts %}<td class="num">{{ f.get(k, "-") }}</td>{% endfor %}</tr>
{% endfor %}
</table>

<h2>Learning curves</h2>
<img alt="learning curves compared" src="{{ curves }}">

<h2>Config differences</h2>
{% if differ %}
<table>
<tr><th>field</th>{% for n in names %}<th>{{ n }}</th>{% endfor %}</tr>
{% for k, values in differ %}
<tr><th>{{ k }}</th>{% for v in values %}<td>{{ v | fmt }}</td>{% endfor %}</tr>
{% endfor %}
</table>
{% else %}<p class="muted">The configs are the same.</p>{% endif %}

{% if per_class %}
<h2>F1 per class (best checkpoint, validation)</h2>
<table>
<tr><th>class</th>{% for n in names %}<th>{{ n }}</th>{% endfor %}</tr>
{% for row in per_class %}
<tr><td>{{ row["class"] }}</td>{% for f in row.f1 %}<td class="num">{{ "%.4f" % f }}</td>
{% endfor %}</tr>
{% endfor %}
</table>
{% endif %}
"""
