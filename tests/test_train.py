import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from digitjax import checkpoint, loop, train, workdir
from digitjax.configs import default, seed
from digitjax.data import load_train
from digitjax.errors import UserError


@pytest.fixture(scope="module")
def batch(digits_dir, tmp_path_factory):
    config = default.get_config()
    config.data_dir = str(digits_dir)
    ds = load_train(config, tmp_path_factory.mktemp("cache"))
    return {"image": jnp.asarray(ds.images[:32] / 255.0, jnp.float32),
            "label": jnp.asarray(ds.labels[:32])}


def state_for(config, n=32):
    return train.create_train_state(config, jax.random.key(0), (28, 28, 1), 10,
                                    steps_per_epoch=10)


def test_train_step_lowers_the_loss_and_counts_steps(batch):
    state = state_for(default.get_config())
    step = jax.jit(train.train_step)
    losses = []
    for _ in range(5):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    assert int(state.step) == 5
    assert losses[-1] < losses[0]
    assert 0.0 <= float(metrics["accuracy"]) <= 1.0


def test_train_step_is_deterministic(batch):
    a, ma = jax.jit(train.train_step)(state_for(default.get_config()), batch)
    b, mb = jax.jit(train.train_step)(state_for(default.get_config()), batch)
    assert float(ma["loss"]) == float(mb["loss"])
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
        assert np.array_equal(x, y)


def test_pmap_with_axis_name_matches_jit(batch):
    """With one device, the pmapped step (pmean over a size-1 axis) equals the jitted one."""
    state = state_for(seed.get_config())
    expected, m = jax.jit(train.train_step)(state, batch)
    p_step = jax.pmap(functools.partial(train.train_step, axis_name="batch"), axis_name="batch")
    replicated = jax.tree.map(lambda x: jnp.expand_dims(x, 0), state)  # device axis of 1
    got, pm = p_step(replicated, jax.tree.map(lambda x: x[None], batch))
    np.testing.assert_allclose(pm["loss"][0], m["loss"], rtol=1e-6)
    for x, y in zip(jax.tree.leaves(got.params), jax.tree.leaves(expected.params), strict=True):
        np.testing.assert_allclose(x[0], y, rtol=1e-5, atol=1e-7)


def test_eval_step_ignores_masked_rows(batch):
    state = state_for(seed.get_config())
    full = train.eval_step(state, batch)
    half = {**batch, "mask": jnp.arange(32) < 16}
    first = train.eval_step(state, {k: v[:16] for k, v in batch.items()})
    masked = train.eval_step(state, half)
    assert float(full["count"]) == 32 and float(masked["count"]) == 16
    np.testing.assert_allclose(masked["loss"], first["loss"], rtol=1e-6)
    np.testing.assert_allclose(masked["accuracy"], first["accuracy"])


def test_checkpoint_round_trip_keeps_the_newest_and_the_best(batch, tmp_path):
    state = state_for(default.get_config())
    ckpts = checkpoint.Checkpoints(tmp_path, keep=2)
    saved = {}
    for step, score in [(1, 0.5), (2, 0.9), (3, None), (4, 0.7), (5, 0.6)]:
        state, _ = jax.jit(train.train_step)(state, batch)
        meta = {"step": step, "class_names": ["a"], "input_shape": [28, 28, 1]}
        ckpts.save(step, state, meta, score)
        saved[step] = state
    ckpts.wait()
    # the newest two (4, 5) and the best (2); 3 (mid-epoch, no score) and 1 are gone
    assert ckpts.steps() == [2, 4, 5] and ckpts.best_step() == 2
    ckpts.close()
    restored, got_meta = checkpoint.load(tmp_path, lambda m: state_for(default.get_config()))
    assert got_meta["step"] == 2 and int(restored.step) == 2
    for x, y in zip(jax.tree.leaves(restored), jax.tree.leaves(saved[2]), strict=True):
        assert np.array_equal(as_numpy(x), as_numpy(y))
    assert checkpoint.latest_meta(tmp_path)["step"] == 5


def as_numpy(x) -> np.ndarray:
    x = jnp.asarray(x)
    return np.asarray(jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x)


def small_run_config(digits_dir, epochs):
    config = default.get_config()
    config.data_dir = str(digits_dir)
    config.num_epochs = epochs
    config.batch_size = 64
    config.cnn.features = (8, 16)
    config.cnn.dense = 32
    config.progress = False
    return config


def params_of(workdir, config):
    template = train.create_train_state(config, jax.random.key(1), (28, 28, 1), 10, 1)
    return checkpoint.load(workdir, lambda meta: template, "latest")


class Interrupted(Exception):
    pass


def test_resume_ends_with_the_same_parameters(digits_dir, tmp_path, monkeypatch):
    """Two epochs straight == the same command killed after epoch 1 and run again."""
    straight = loop.train_and_evaluate(small_run_config(digits_dir, 2), tmp_path / "a")

    real_save = checkpoint.Checkpoints.save

    def save_then_crash(*args, **kwargs):
        real_save(*args, **kwargs)
        raise Interrupted

    monkeypatch.setattr(checkpoint.Checkpoints, "save", save_then_crash)
    with pytest.raises(Interrupted):
        loop.train_and_evaluate(small_run_config(digits_dir, 2), tmp_path / "b")
    monkeypatch.setattr(checkpoint.Checkpoints, "save", real_save)
    assert checkpoint.latest_meta(tmp_path / "b")["epoch"] == 1
    resumed = loop.train_and_evaluate(small_run_config(digits_dir, 2), tmp_path / "b")
    assert straight["val_accuracy"] == resumed["val_accuracy"]
    a, meta_a = params_of(tmp_path / "a", small_run_config(digits_dir, 2))
    b, meta_b = params_of(tmp_path / "b", small_run_config(digits_dir, 2))
    assert meta_a["epoch"] == meta_b["epoch"] == 2 and int(a.step) == int(b.step) == 2 * (577 // 64)
    for x, y in zip(jax.tree.leaves((a.params, a.batch_stats, a.opt_state)),
                    jax.tree.leaves((b.params, b.batch_stats, b.opt_state)), strict=True):
        assert np.array_equal(x, y)
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2


def test_finished_run_is_not_retrained(digits_dir, tmp_path):
    config = small_run_config(digits_dir, 1)
    first = loop.train_and_evaluate(config, tmp_path)
    stamp = (tmp_path / "metrics.jsonl").stat().st_mtime_ns
    again = loop.train_and_evaluate(config, tmp_path)
    assert again == first and again["epoch"] == 1
    assert (tmp_path / "metrics.jsonl").stat().st_mtime_ns == stamp


def test_ema_follows_the_weights(batch):
    config = default.get_config()
    config.ema_decay = 0.9
    state = state_for(config)
    step = jax.jit(train.train_step)
    for t in range(1, 101):  # decay min(0.9, (1 + t) / (10 + t)), t the updated step
        new, _ = step(state, batch)
        d = min(0.9, (1 + t) / (10 + t))
        if t in (1, 100):
            for e, e0, p1 in zip(jax.tree.leaves(new.ema_params),
                                 jax.tree.leaves(state.ema_params),
                                 jax.tree.leaves(new.params), strict=True):
                np.testing.assert_allclose(e, d * e0 + (1 - d) * p1, rtol=1e-5, atol=1e-6)
        state = new
    assert train.eval_params(new) is new.ema_params


def test_onecycle_schedule_peaks_mid_run():
    config = default.get_config()
    config.schedule, config.schedule_kwargs, config.num_epochs = "onecycle", {}, 10
    lr = train.learning_rate_schedule(config, steps_per_epoch=10)
    values = [float(lr(s)) for s in range(100)]
    assert max(values) == pytest.approx(config.learning_rate, rel=1e-3)
    assert values[0] < values[30] > values[99]


def test_ema_state_survives_donated_steps(digits_dir):
    """The run's own path: a replicated state, then the donating jitted step, twice."""
    from digitjax import parallel

    config = small_run_config(digits_dir, 1)
    config.ema_decay = 0.99
    mesh = parallel.data_mesh()
    state = parallel.init_state(
        lambda: train.create_train_state(config, jax.random.key(0), (28, 28, 1), 10, 5), mesh)
    step = loop.make_train_fn(config, None, jax.tree.map(lambda x: x.sharding, state))
    images = np.zeros((64, 28, 28, 1), np.uint8)
    labels = np.zeros(64, np.int32)
    for _ in range(2):
        state, metrics = step(state, images, labels)
    assert int(state.step) == 2 and np.isfinite(float(metrics["loss"]))


def test_a_run_saved_before_the_newer_fields_resumes_unless_they_change(tmp_path):
    config = default.get_config()
    saved = json.loads(config.to_json())
    for field in workdir.ADDED_FIELDS:  # "group.name" or a top-level "name"
        *groups, name = field.split(".")
        del (saved[groups[0]] if groups else saved)[name]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    workdir.check_same_run(tmp_path, config)  # the defaults reproduce the older run
    config.augment.shear_deg = 5.0
    with pytest.raises(UserError, match=r"\(fields config.augment.shear_deg\)"):
        workdir.check_same_run(tmp_path, config)


def test_a_changed_num_epochs_resumes_and_says_the_schedule_changes(tmp_path, capsys):
    config = default.get_config()
    (tmp_path / "config.json").write_text(config.to_json())
    workdir.check_same_run(tmp_path, config)
    assert "num_epochs" not in capsys.readouterr().out
    config.num_epochs = 30
    workdir.check_same_run(tmp_path, config)  # allowed: extends the run
    assert "note: num_epochs 20 -> 30: the learning-rate schedule is rebuilt" in \
        capsys.readouterr().out


def without_key_type(x):
    """A typed PRNG key's raw data (comparable with np.array_equal); anything else as is."""
    return (jax.random.key_data(x) if jax.dtypes.issubdtype(getattr(x, "dtype", None),
                                                           jax.dtypes.prng_key) else x)


def test_fast_init_compile_gives_the_same_state(monkeypatch):
    """parallel.init_compiler_options (LLVM level 1 on CPU) changes compile time only."""
    from digitjax import parallel

    config = default.get_config()
    mesh = parallel.data_mesh()

    def state_bits():
        state = parallel.init_state(
            lambda: train.create_train_state(config, jax.random.key(3), (28, 28, 1), 10, 5),
            mesh)
        return [np.asarray(without_key_type(x)) for x in jax.tree.leaves(state)]

    passed = []  # what init_state hands jax.jit
    real_jit = jax.jit

    def recording_jit(fn, **kwargs):
        passed.append(kwargs.get("compiler_options"))
        return real_jit(fn, **kwargs)

    monkeypatch.setattr(parallel.jax, "jit", recording_jit)
    fast = state_bits()
    monkeypatch.setenv("DIGITJAX_FAST_INIT_COMPILE", "0")
    default_compile = state_bits()
    assert passed == [{"xla_backend_optimization_level": 1}, {}]  # on CPU, then switched off
    assert len(fast) == len(default_compile) > 10
    for x, y in zip(fast, default_compile, strict=True):
        assert x.dtype == y.dtype and np.array_equal(x, y)


def test_prediction_restores_into_an_abstract_template(digits_dir, tmp_path, monkeypatch):
    """predict.restore_checkpoint builds no state of its own (parallel.abstract_state):
    what it restores equals the checkpoint read into a real state, placed on the mesh."""
    from digitjax import parallel, predict

    config = small_run_config(digits_dir, 1)
    loop.train_and_evaluate(config, tmp_path)
    real, _ = params_of(tmp_path, config)

    def no_init(*args, **kwargs):
        raise AssertionError("prediction compiled and ran an initialisation")

    monkeypatch.setattr(parallel, "init_state", no_init)
    restored, meta = predict.restore_checkpoint(config, tmp_path, "latest")
    assert meta["epoch"] == 1 and int(restored.step) == int(real.step) > 0
    mesh_devices = set(parallel.data_mesh(config).devices.flat)
    real_leaves, restored_leaves = jax.tree.leaves(real), jax.tree.leaves(restored)
    assert len(real_leaves) == len(restored_leaves) > 10
    for x, y in zip(real_leaves, restored_leaves, strict=True):
        assert isinstance(y, jax.Array) and set(y.sharding.device_set) == mesh_devices
        # the step: an int in the template, an array here
        assert np.array_equal(without_key_type(x), without_key_type(y))


def test_prediction_compiles_once_for_several_calls(monkeypatch):
    """predict_probs traces its function once per (normalization, shifts), not per call
    (the validation report and the test prediction of a run share it), and the reused
    function gives what a fresh one gives."""
    from digitjax import predict

    config = default.get_config()
    state = state_for(config)
    images = np.random.default_rng(0).integers(0, 256, (37, 28, 28, 1), dtype=np.uint8)
    norm = {"mean": np.float32([33.3]), "std": np.float32([78.5])}
    traces = []
    real_apply = predict.apply_model
    monkeypatch.setattr(predict, "apply_model",
                        lambda s, x: traces.append(x.shape) or real_apply(s, x))
    predict._probs_fn.cache_clear()
    first = predict.predict_probs(state, images, config, norm, tta_shifts=())
    # the same statistics as a run's saved record (lists), then shifted views
    again = predict.predict_probs(state, images[::-1], config,
                                  {k: v.tolist() for k, v in norm.items()}, tta_shifts=())
    assert len(traces) == 1 and first.shape == (37, 10)
    shifted = predict.predict_probs(state, images, config, norm, tta_shifts=((0, 0), (1, 0)))
    assert len(traces) == 3  # a new function for new shifts: one trace, two views
    predict._probs_fn.cache_clear()
    assert np.array_equal(again, predict.predict_probs(state, images[::-1], config, norm,
                                                       tta_shifts=()))
    assert not np.array_equal(first, shifted)
    predict._probs_fn.cache_clear()  # none traced with the stand-in apply_model stays


def test_the_metrics_writer_compiles_the_schedule_once(tmp_path):
    """MetricsWriter.learning_rate is the schedule's rate of update `step` (1-based),
    from one compiled function: an eagerly run optax schedule compiled each of its ops."""
    from digitjax.metrics_writer import MetricsWriter

    config = default.get_config()
    schedule = train.learning_rate_schedule(config, steps_per_epoch=50)
    calls = []
    writer = MetricsWriter(tmp_path, lambda count: calls.append(count) or schedule(count))
    steps = [1, 2, 77, 50 * config.num_epochs]
    rates = [writer.learning_rate(s) for s in steps]
    # compiled, its float32 arithmetic may round apart from the eager ops' by an ulp or so
    assert rates == pytest.approx([float(schedule(s - 1)) for s in steps], rel=1e-5, abs=0)
    assert len(calls) == 1 and rates[0] != rates[2]  # traced once for every step


@pytest.mark.parametrize("ahead", ["1", "0"])
def test_the_steps_are_compiled_ahead_on_a_thread(digits_dir, tmp_path, monkeypatch, ahead,
                                                  without_compilation_cache):
    """compile_cache.compile_ahead: a run's training and validation steps are compiled
    on a thread before the first epoch, laid out as the real calls' arguments, so the
    epoch's first step and its validation compile nothing; DIGITJAX_COMPILE_AHEAD=0
    leaves them to the first calls."""
    import threading
    import traceback

    monkeypatch.setenv("DIGITJAX_COMPILE_AHEAD", ahead)
    late, threads = [], set()

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            threads.add(threading.current_thread().name)
            names = [f.name for f in traceback.extract_stack()]
            if ("train_epoch" in names or "evaluate" in names) and "learning_rate" not in names:
                late.append(names[-8:])

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        loop.train_and_evaluate(small_run_config(digits_dir, 1), tmp_path)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    if ahead == "1":
        assert late == [] and "compile_ahead" in threads
    else:
        assert len(late) == 2 and "compile_ahead" not in threads  # the step, validation
