import sys, jax, jax.numpy as jnp
from common import step_config
from digitjax import loop, train
config = step_config(sys.argv[1])
state = train.create_train_state(config, jax.random.key(0), (28, 28, 1), 10, 100)
step = loop.make_train_fn(config, None)
x = jnp.zeros((128, 28, 28, 1), jnp.uint8); y = jnp.zeros((128,), jnp.int32)
print(step.lower(state, x, y).compile().as_text())
