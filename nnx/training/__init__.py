"""Training utilities: the Optimizer, metrics, mixed precision, EMA, TrainState.

Everything here is ordinary graph state: an Optimizer holds its optax state as Variables,
metrics hold their running sums as Variables, an EMA its averages, a DynamicLossScale its
scale, so they pass through ``nnx.jit`` and checkpoints like a model does. ``TrainState`` is
the one exception on purpose: an immutable pytree for the functional, plain-``jax.jit`` style.

Files: ``optimizer`` (Optimizer, OptState), ``model_and_optimizer`` (ModelAndOptimizer),
``metrics``, ``ema`` (EMA), ``train_state`` (TrainState), ``accumulate``
(accumulate_gradients), ``mixed_precision`` (Policy, apply_policy, DynamicLossScale,
scaled_step, scaled_update).
"""

from . import metrics as metrics
from .accumulate import accumulate_gradients as accumulate_gradients
from .ema import EMA as EMA
from .mixed_precision import DynamicLossScale as DynamicLossScale
from .mixed_precision import LossScaleState as LossScaleState
from .mixed_precision import Policy as Policy
from .mixed_precision import StepResult as StepResult
from .mixed_precision import all_finite as all_finite
from .mixed_precision import apply_policy as apply_policy
from .mixed_precision import scaled_step as scaled_step
from .mixed_precision import scaled_update as scaled_update
from .model_and_optimizer import ModelAndOptimizer as ModelAndOptimizer
from .optimizer import OptArray as OptArray
from .optimizer import Optimizer as Optimizer
from .optimizer import OptState as OptState
from .optimizer import OptVariable as OptVariable
from .train_state import TrainState as TrainState
