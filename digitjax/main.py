"""Command line: train (then predict the test split, plot and report), or with a
trained workdir predict, evaluate on labelled data, or report (one run, or several
side by side).

    python -m digitjax.main --config configs/default.py --workdir runs/default \
        --config.data_dir=path/to/digit-recognizer
    python -m digitjax.main --workdir runs/default --mode=predict --input=path/to/test.csv
    python -m digitjax.main --workdir runs/default --mode=evaluate --input=path/to/labelled
    python -m digitjax.main --mode=report --workdir runs/default
    python -m digitjax.main --mode=report --workdirs=runs/a,runs/b --output_dir=runs
"""

from __future__ import annotations

import atexit
import logging as std_logging
import os
import sys
import threading
from pathlib import Path

from absl import app, flags, logging
from etils import epath
from ml_collections import config_flags

from digitjax import compile_cache, console, loop, parallel, predict, preemption, scores
from digitjax.configs import default
from digitjax.errors import UserError
from digitjax.models import conv

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file (configs/*.py); other modes read the workdir's own.")
_WORKDIR = flags.DEFINE_string("workdir", "", "Run folder; default runs/<config name>.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "predict", "evaluate", "report"],
                          "Train; predict or evaluate --input; report a workdir (or --workdirs).")
_INPUT = flags.DEFINE_string(
    "input", "", "predict: images (folder, image file, pixel CSV); evaluate: labelled data "
    "(class folders, labels CSV, pixel CSV with labels).")
_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", "", "predict: default <workdir>/predict/<input name>; evaluate: default "
    "<workdir>/evaluation; report --workdirs: default their common parent.")
_WORKDIRS = flags.DEFINE_list("workdirs", [], "--mode=report: trained workdirs to compare.")
_STOP_AFTER = flags.DEFINE_integer(
    "stop_after_epoch", 0, "End this invocation after that epoch (0: run to num_epochs).")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", "", "Multi-host: HOST:PORT of process 0 (auto on TPU VMs, SLURM).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 0, "Multi-host: number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", -1, "Multi-host: this process's index.")


def run(argv: list[str]) -> None:
    if len(argv) > 1:
        raise UserError(f"unexpected arguments {argv[1:]} (flags are --name=value)")
    config_path = flags.FLAGS["config"].config_filename if flags.FLAGS["config"].present else None
    if config_path is None:  # the modes that read a trained workdir have its config.json
        if _MODE.value == "train":
            raise UserError("--config: expected a config file to train, such as "
                            "configs/default.py")
        if not _WORKDIR.value and not (_MODE.value == "report" and _WORKDIRS.value):
            raise UserError(f"--workdir: expected the trained run's folder for --mode="
                            f"{_MODE.value}")
        config = default.get_config()
    else:
        try:
            config = _CONFIG.value
            config.to_dict()  # the loader defers its errors to the first access
        except Exception as e:  # noqa: BLE001 - the loader raises several kinds; all mean one
            text = str(e).strip()
            first = text.splitlines()[-1].strip() if text else type(e).__name__
            raise UserError(f"--config: cannot load '{config_path}' ({first}; expected a "
                            "config file defining get_config(), such as configs/default.py)"
                            ) from None
    conv.enabled_tricks()  # a bad DIGITJAX_CPU_CONV_TRICKS stops here, not in a model's trace
    workdir = workdir_path(_WORKDIR.value or str(Path("runs") / Path(config_path or "").stem))
    if _OUTPUT_DIR.value:
        _need_folder(epath.Path(_OUTPUT_DIR.value), "--output_dir")
    parallel.set_cpu_devices(config.get("cpu_devices", 0))
    parallel.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    compile_cache.enable(config.get("compilation_cache_dir", ""))
    if _MODE.value == "train":
        train(config, workdir)
    elif _MODE.value == "report":
        from digitjax import report  # imported where used: matplotlib and scikit-learn load slowly

        if _WORKDIRS.value:
            written = report.write_comparison(_WORKDIRS.value, _OUTPUT_DIR.value or None)
        else:
            written = report.write_report(config, workdir)
        console.log(f"wrote {written}")
    else:
        if not _INPUT.value:
            raise UserError(f"--input: expected the images to {_MODE.value} with "
                            f"--mode={_MODE.value}")
        if _MODE.value == "predict":
            # by default beside, never over, the run's own test predictions
            default_out = workdir / "predict" / epath.Path(_INPUT.value.rstrip("/")).stem
            written = predict.predict_path(config, workdir, _INPUT.value,
                                           _OUTPUT_DIR.value or default_out)
        else:
            from digitjax import evaluate

            result, written = evaluate.evaluate_path(
                config, workdir, _INPUT.value, _OUTPUT_DIR.value or workdir / "evaluation")
            console.log(f"{_INPUT.value}: accuracy {result['accuracy']:.4f} on "
                        f"{result['images']} images (best checkpoint, epoch "
                        f"{result['checkpoint_epoch']})")
            console.log(scores.format_table(result["per_class"]))
        for path in written:
            console.log(f"wrote {path}")


def workdir_path(value: str) -> epath.Path:
    """The workdir as an epath (a `gs://` URL stays one); a URL whose filesystem
    cannot be reached stops here, naming it."""
    workdir = epath.Path(value)
    if "://" in value:
        try:
            workdir.exists()
        except Exception as e:  # noqa: BLE001 - any failure: the URL cannot be used
            reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise UserError(f"--workdir: cannot reach '{value}' ({reason}); gs:// needs "
                            "gcsfs (pip install gcsfs) and credentials") from None
    _need_folder(workdir, "--workdir")
    return workdir


def _need_folder(path: epath.Path, flag: str) -> None:
    """Refuses a path that exists as a file where a folder will be written."""
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag}: expected a folder (or a new path), got the file '{path}'")


WRITE_FAILURES = ("No space left on device", "Read-only file system", "Permission denied",
                  "Disk quota exceeded", "Operation not permitted", "Not a directory")


def write_failure(e: BaseException) -> str | None:
    """The reason when `e` (or what it wraps) is a failed write: a full disk, a
    read-only or forbidden folder; orbax and tensorstore wrap the OSError."""
    while e is not None:
        text = str(e)
        for reason in WRITE_FAILURES:
            if reason in text:
                where = getattr(e, "filename", None)
                return f"{reason}{f' ({where})' if where else ''}"
        e = e.__cause__ or e.__context__
    return None


class _QuietWriteFailures(std_logging.Filter):
    """Drops the log records and thread tracebacks of a failed write: orbax's writer
    threads report it at length, and `main` says it in one line."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return write_failure(exc) is None and not any(
            reason in record.getMessage() for reason in WRITE_FAILURES)

    @staticmethod
    def noise(value: BaseException | None) -> bool:
        # tensorstore completes a failed write's futures after orbax closed their event
        # loop, and each callback raises this: noise beside the real error.
        closed = isinstance(value, RuntimeError) and str(value) == "Event loop is closed"
        return closed or write_failure(value) is not None

    @staticmethod
    def excepthook(args) -> None:
        if not _QuietWriteFailures.noise(args.exc_value):
            threading.__excepthook__(args)

    @staticmethod
    def sys_excepthook(kind, value, tb) -> None:
        if not _QuietWriteFailures.noise(value):
            sys.__excepthook__(kind, value, tb)

    @staticmethod
    def unraisablehook(args) -> None:
        # A failed checkpoint read (reported in one warning line) leaves orbax read
        # coroutines that raise again when freed: their "Exception ignored" is noise too.
        code = getattr(args.object, "cr_code", None)
        orbax_coroutine = code is not None and "orbax" in code.co_filename
        if not (_QuietWriteFailures.noise(args.exc_value) or orbax_coroutine):
            sys.__unraisablehook__(args)


def train(config, workdir: epath.Path) -> None:
    """Trains, then with the best checkpoint: the validation scores (printed, and in
    summary.json), the test split's predictions, and unless config.plots is off the
    plots and report.html."""
    result = loop.train_and_evaluate(config, workdir, _STOP_AFTER.value)
    if result["epoch"] < config.num_epochs:
        console.log(f"stopped after epoch {result['epoch']}; run again to resume")
        return
    best = predict.restore_best(config, workdir)
    summary = predict.validation_report(config, workdir, best)
    if summary:
        n = summary["val_count"]
        tta = summary.get("val_accuracy_tta")
        console.log(f"{summary['checkpoint']} checkpoint (epoch {summary['best_epoch']}): "
                    "validation accuracy "
                    f"{scores.with_interval(summary['val_accuracy'], n)}"
                    + (f"; with test-time shifts {scores.with_interval(tta, n)}" if tta else ""))
        console.log(scores.format_table(summary["per_class"]))
    for path in predict.predict_test_set(config, workdir, best):
        console.log(f"wrote {path}")
    if config.plots:
        from digitjax import checkpoint, plots, report

        listing = checkpoint.listing(workdir)  # every process: orbax keeps them in step
        if parallel.is_writer():  # from the files: process 0 alone
            for path in plots.write_run_plots(config, workdir):
                console.log(f"wrote {path}")
            console.log(f"wrote {report.write_report(config, workdir, listing)}")


def main(argv: list[str]) -> None:
    std_logging.getLogger("absl").addFilter(_QuietWriteFailures())
    threading.excepthook = _QuietWriteFailures.excepthook
    sys.excepthook = _QuietWriteFailures.sys_excepthook
    sys.unraisablehook = _QuietWriteFailures.unraisablehook
    # orbax logs every file it touches (INFO) and that a predicting run opens its
    # checkpoints read only (WARNING); digitjax prints what a user needs itself.
    logging.set_verbosity(logging.ERROR)
    try:
        run(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except preemption.Stopped as e:
        print(str(e), file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print("error: interrupted (nothing half-written is left behind)", file=sys.stderr)
        sys.exit(130)
    except Exception as e:
        reason = write_failure(e)
        if reason is None:
            raise
        print(f"error: cannot write the run's files: {reason}; the checkpoints and outputs "
              "written before are intact", file=sys.stderr, flush=True)
        sys.stdout.flush()
        # Orbax's writer threads still hold callbacks into a closed event loop; an
        # orderly interpreter exit would print their tracebacks after the line above.
        os._exit(1)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parser, with a one-line message instead of a traceback for any bad flag
    (an unknown config field raises from inside ml_collections)."""
    try:
        return flags.FLAGS(argv)
    except Exception as e:  # noqa: BLE001 - every failure here is a bad command line
        message = str(e)
        if isinstance(e, AttributeError | KeyError):
            bad = [a for a in argv[1:] if a.startswith("--config.")]
            message = f"no config field '{message.strip(chr(34) + chr(39))}' (in {' '.join(bad)})"
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def exit_without_teardown() -> None:
    """Ends a finished command's process at once: the exit handlers run and the output
    is flushed, then the process ends without the interpreter's teardown (freeing every
    module and jaxlib's, tensorstore's and XLA's objects one by one): 1.2 s of a
    `configs/quick.py` run's end, 0.08 s this way (measured on the 2-core CPU). Every file
    is written and closed by then (checkpoints, metrics and TensorBoard writers are
    closed by the loop). DIGITJAX_FAST_EXIT=0 keeps the ordinary exit."""
    if os.environ.get("DIGITJAX_FAST_EXIT", "1") == "0":
        return
    atexit._run_exitfuncs()  # noqa: SLF001 - CPython's own exit handlers, run as at exit
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _main_then_exit(argv: list[str]) -> None:
    main(argv)
    exit_without_teardown()


if __name__ == "__main__":
    app.run(_main_then_exit, flags_parser=parse_flags)
