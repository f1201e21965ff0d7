"""The seams of the code: names picked from registries with kwargs from the config,
workdirs made before the registries, the README's import example from outside the
checkout, and the NaN guard."""

import json
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import optax
import pytest

from digitjax import checkpoint, loop, train, workdir
from digitjax.configs import default, seed
from digitjax.errors import TrainingDiverged, UserError
from digitjax.models import create_model
from tests.conftest import REPO, run_main


def test_any_optax_optimizer_by_name_with_its_kwargs():
    config = default.get_config()
    config.optimizer, config.optimizer_kwargs = "sgd", {"momentum": 0.9, "nesterov": True}
    state = train.create_train_state(config, jax.random.key(0), (28, 28, 1), 10, 5)
    assert isinstance(state.opt_state[0], optax.TraceState)  # sgd's momentum trace
    config.optimizer, config.optimizer_kwargs = "adamw", {"weight_decay": 0.5}
    tx = train.create_optimizer(config, 5)
    params = {"w": jnp.ones(3)}
    updates, _ = tx.update({"w": jnp.zeros(3)}, tx.init(params), params)
    # With zero gradients only the decoupled decay moves the weights: -lr * wd * w.
    lr = train.learning_rate_schedule(config, 5)(0)
    assert jnp.allclose(updates["w"], -lr * 0.5 * params["w"])


@pytest.mark.parametrize("field, value, message", [
    ("optimizer", "adamz", "config.optimizer: expected the name of an optax optimizer such as "
                           "'adam', 'adamw' or 'sgd', got 'adamz'"),
    ("optimizer", "softmax_cross_entropy", "config.optimizer: expected the name of an optax "
                                           "optimizer"),
    ("optimizer_kwargs", {"weight_decay": 1e-4}, "config.optimizer_kwargs: got an unexpected "
                                                 "keyword argument 'weight_decay' (for 'adam')"),
    ("schedule", "linear", "config.schedule: expected one of ['constant', 'exponential', "
                           "'onecycle', 'warmup_cosine'], got 'linear'"),
    ("model", "vgg", "config.model: expected one of ['cnn', 'inception_cnn', "
                     "'kernel_cnn', 'resnet', 'seed_cnn', 'strided_cnn'], got 'vgg'"),
])
def test_a_bad_name_or_kwarg_is_named_once(field, value, message):
    config = default.get_config()
    config[field] = value
    with pytest.raises(UserError, match=re.escape(message)):
        train.create_train_state(config, jax.random.key(0), (28, 28, 1), 10, 5)


def test_schedule_kwargs_that_the_schedule_does_not_take_are_named():
    config = default.get_config()
    config.schedule = "constant"  # the default's warmup_epochs stays: constant takes none
    with pytest.raises(UserError, match=re.escape(
            "config.schedule_kwargs: got an unexpected keyword argument 'warmup_epochs' "
            "(for 'constant')")):
        train.learning_rate_schedule(config, 10)
    config.schedule, config.schedule_kwargs = "exponential", {"decay_rate": 0.5}
    lr = train.learning_rate_schedule(config, steps_per_epoch=10)
    assert float(lr(20)) == pytest.approx(config.learning_rate * 0.25)


def test_models_take_their_config_group_as_kwargs():
    config = default.get_config()
    config.cnn.features, config.cnn.dense = [4, 8], 16  # a list, as JSON gives it back
    model = create_model(config, 3)
    assert model.features == (4, 8) and model.dense == 16 and model.num_classes == 3
    variables = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    assert variables["params"]["Conv_1"]["kernel"].shape == (3, 3, 4, 8)


def old_layout(config) -> dict:
    """A config.json as digitjax wrote it before the registries (commit af0f9b4)."""
    saved = json.loads(config.to_json())
    saved["model"] = {"seed_cnn": "seed"}.get(saved["model"], saved["model"])
    saved["parallelism"] = "jit"
    saved["warmup_epochs"] = saved["schedule_kwargs"].get("warmup_epochs", 1.0)
    saved["decay_rate"], saved["weight_decay"] = 0.9, 0.0
    for name in ("schedule_kwargs", "optimizer_kwargs", "seed_cnn"):
        del saved[name]
    for field in workdir.ADDED_FIELDS:
        *groups, name = field.split(".")
        node = saved
        for group in groups:
            node = node[group]
        del node[name]
    return saved


@pytest.mark.parametrize("make", [default.get_config, seed.get_config])
def test_a_workdir_from_before_the_registries_resumes_and_predicts(make, tmp_path):
    config = make()
    (tmp_path / "config.json").write_text(json.dumps(old_layout(config)))
    workdir.check_same_run(tmp_path, config)  # the same run: resumable
    restored = workdir.saved_config(tmp_path, default.get_config())
    assert restored.model == config.model
    assert restored.schedule_kwargs.to_dict() == config.schedule_kwargs.to_dict()
    assert restored.optimizer_kwargs.to_dict() == {}
    config.augment.shear_deg = 5.0
    with pytest.raises(UserError, match=r"\(fields config.augment.shear_deg\)"):
        workdir.check_same_run(tmp_path, config)


def readme_example() -> str:
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Using the training step elsewhere"):]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_readme_example_runs_outside_the_checkout(tmp_path):
    proc = subprocess.run([sys.executable, "-c", readme_example()], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "'accuracy'" in proc.stdout and "'count'" in proc.stdout


def small_config(digits_dir, epochs=2):
    config = seed.get_config()
    config.data_dir = str(digits_dir)
    config.num_epochs, config.batch_size, config.progress = epochs, 64, False
    return config


def test_a_nan_loss_stops_at_its_step_and_keeps_the_last_checkpoint(digits_dir, tmp_path,
                                                                   monkeypatch):
    loop.train_and_evaluate(small_config(digits_dir), tmp_path, stop_after_epoch=1)
    assert checkpoint.latest_meta(tmp_path)["epoch"] == 1  # 9 steps of 64 on 577 rows
    real_step = loop.train_step

    def poisoned(state, batch):  # the loss turns NaN from the 13th update on
        state, metrics = real_step(state, batch)
        bad = jnp.where(state.step >= 13, jnp.nan, metrics["loss"])
        return state, {**metrics, "loss": bad}

    monkeypatch.setattr(loop, "train_step", poisoned)
    with pytest.raises(TrainingDiverged, match=re.escape(
            "train loss became nan at step 13 (batch 4 of 9 in epoch 2)")) as e:
        loop.train_and_evaluate(small_config(digits_dir), tmp_path)
    assert "are intact" in str(e.value)
    assert checkpoint.latest_meta(tmp_path)["epoch"] == 1
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 1


def test_a_diverging_run_says_so_in_one_line(digits_dir, tmp_path):
    proc = run_main("--config", "configs/seed.py", f"--workdir={tmp_path}",
                    f"--config.data_dir={digits_dir}", "--config.learning_rate=1e30",
                    "--config.progress=false")
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: train loss became nan at step 2 (batch 2 of")
    assert "no checkpoint was saved" in proc.stderr
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()]


def test_the_run_fills_its_compilation_cache(trained_workdir):
    """The trained_workdir fixture ran with --config.compilation_cache_dir=<tmp>/xla_cache."""
    cached = list((trained_workdir.parent / "xla_cache").iterdir())
    assert any(p.name.startswith("jit_step") for p in cached), [p.name for p in cached][:5]
