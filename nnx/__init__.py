"""nnx: object-oriented, mutable neural-network modules on JAX.

Every public name is re-exported here explicitly; nothing is defined in this file but the
lazy attribute that imports the optional ``nnx.bridge`` (it needs flax.linen) on first use.
"""


import builtins as _builtins

from . import checkpointing as checkpointing
from . import compat as compat
from . import deprecations as deprecations
from . import errors as errors
from . import extract as extract
from . import filters as filterlib  # noqa: F401 - flax name
from . import graph as graph
from . import graph as graphlib  # noqa: F401 - flax name
from . import helpers as helpers
from . import locate as locate
from . import nn as nn
from . import pytreelib as object  # noqa: F401 - flax name
from . import rngs as rnglib  # noqa: F401 - flax name
from . import state as statelib  # noqa: F401 - flax name
from . import tracers as tracers
from . import traversals as traversals
from . import variablelib as variablelib
from . import visualization as visualization
from ._graph_mode import set_graph_mode as set_graph_mode
from ._graph_mode import set_graph_updates as set_graph_updates
from .checkpointing import CheckpointCorruptError as CheckpointCorruptError
from .checkpointing import Checkpointer as Checkpointer
from .checkpointing import CheckpointError as CheckpointError
from .checkpointing import CheckpointMismatchError as CheckpointMismatchError
from .contexts import MergeContext as MergeContext
from .contexts import SplitContext as SplitContext
from .contexts import UpdateContext as UpdateContext
from .contexts import current_update_context as current_update_context
from .contexts import merge_context as merge_context
from .contexts import split_context as split_context
from .contexts import update_context as update_context
from .display import display as display
from .errors import NNXError as NNXError
from .errors import TraceContextError as TraceContextError
from .export import Exported as Exported
from .export import ExportError as ExportError
from .export import export as export
from .export import load_exported as load_exported
from .extract import NodeStates as NodeStates
from .extract import from_tree as from_tree
from .extract import prefix as prefix
from .extract import to_tree as to_tree
from .filters import All as All
from .filters import Any as Any
from .filters import Everything as Everything
from .filters import Not as Not
from .filters import Nothing as Nothing
from .filters import OfType as OfType
from .filters import PathContains as PathContains
from .filters import WithTag as WithTag
from .graph import GraphDef as GraphDef
from .graph import GraphState as GraphState
from .graph import PureState as PureState
from .graph import call as call
from .graph import clone as clone
from .graph import find_duplicates as find_duplicates
from .graph import flatten as flatten
from .graph import graphdef as graphdef
from .graph import is_node as is_node
from .graph import iter_children as iter_children
from .graph import iter_graph as iter_graph
from .graph import iter_module_children as iter_module_children
from .graph import merge as merge
from .graph import pop as pop
from .graph import split as split
from .graph import state as state
from .graph import unflatten as unflatten
from .graph import unpack as unpack
from .graph import update as update
from .graph import variables as variables
from .graph_tools import as_pure as as_pure
from .graph_tools import filter_state as filter_state
from .graph_tools import map as map  # flax name
from .graph_tools import map_state as map_state
from .graph_tools import pure as pure
from .graph_tools import recursive_map as recursive_map
from .graph_tools import set_metadata as set_metadata
from .inference import cast as cast
from .inference import inference as inference
from .module import M as M
from .module import Module as Module
from .module import iter_modules as iter_modules
from .nn import dtypes as _dtypes  # noqa: F401
from .nn import initializers as initializers
from .nn.activations import celu as celu
from .nn.activations import elu as elu
from .nn.activations import gelu as gelu
from .nn.activations import glu as glu
from .nn.activations import hard_sigmoid as hard_sigmoid
from .nn.activations import hard_silu as hard_silu
from .nn.activations import hard_swish as hard_swish
from .nn.activations import hard_tanh as hard_tanh
from .nn.activations import identity as identity
from .nn.activations import leaky_relu as leaky_relu
from .nn.activations import log_sigmoid as log_sigmoid
from .nn.activations import log_softmax as log_softmax
from .nn.activations import logsumexp as logsumexp
from .nn.activations import one_hot as one_hot
from .nn.activations import relu as relu
from .nn.activations import relu6 as relu6
from .nn.activations import selu as selu
from .nn.activations import sigmoid as sigmoid
from .nn.activations import silu as silu
from .nn.activations import soft_sign as soft_sign
from .nn.activations import softmax as softmax
from .nn.activations import softplus as softplus
from .nn.activations import standardize as standardize
from .nn.activations import swish as swish
from .nn.activations import tanh as tanh
from .nn.attention import MultiHeadAttention as MultiHeadAttention
from .nn.attention import combine_masks as combine_masks
from .nn.attention import dot_product_attention as dot_product_attention
from .nn.attention import dot_product_attention_weights as dot_product_attention_weights
from .nn.attention import make_attention_mask as make_attention_mask
from .nn.attention import make_causal_mask as make_causal_mask
from .nn.conv import Conv as Conv
from .nn.conv import ConvTranspose as ConvTranspose
from .nn.embed import Embed as Embed
from .nn.lazy import lazy_init as lazy_init
from .nn.linear import Linear as Linear
from .nn.linear_general import Einsum as Einsum
from .nn.linear_general import LinearGeneral as LinearGeneral
from .nn.lora import LoRA as LoRA
from .nn.lora import LoRALinear as LoRALinear
from .nn.lora import LoRAParam as LoRAParam
from .nn.normalization import BatchNorm as BatchNorm
from .nn.normalization import GroupNorm as GroupNorm
from .nn.normalization import InstanceNorm as InstanceNorm
from .nn.normalization import LayerNorm as LayerNorm
from .nn.normalization import RMSNorm as RMSNorm
from .nn.pooling import avg_pool as avg_pool
from .nn.pooling import max_pool as max_pool
from .nn.pooling import min_pool as min_pool
from .nn.pooling import pool as pool
from .nn.prelu import PReLU as PReLU
from .nn.recurrent import RNN as RNN
from .nn.recurrent import Bidirectional as Bidirectional
from .nn.recurrent import GRUCell as GRUCell
from .nn.recurrent import LSTMCell as LSTMCell
from .nn.recurrent import OptimizedLSTMCell as OptimizedLSTMCell
from .nn.recurrent import RNNCellBase as RNNCellBase
from .nn.recurrent import SimpleCell as SimpleCell
from .nn.reparam import SpectralNorm as SpectralNorm
from .nn.reparam import WeightNorm as WeightNorm
from .nn.sequential import Sequential as Sequential
from .nn.stochastic import Dropout as Dropout
from .pytreelib import Data as Data
from .pytreelib import Dict as Dict
from .pytreelib import Initializer as Initializer
from .pytreelib import List as List
from .pytreelib import Object as Object
from .pytreelib import Pytree as Pytree
from .pytreelib import Static as Static
from .pytreelib import check_pytree as check_pytree
from .pytreelib import data as data
from .pytreelib import dataclass as dataclass
from .pytreelib import has_data as has_data
from .pytreelib import is_data as is_data
from .pytreelib import register_data_type as register_data_type
from .pytreelib import static as static
from .quantize import QuantScale as QuantScale
from .quantize import quantize as quantize
from .rngs import RngCount as RngCount
from .rngs import RngKey as RngKey
from .rngs import Rngs as Rngs
from .rngs import RngState as RngState
from .rngs import RngStream as RngStream
from .rngs import fork_rngs as fork_rngs
from .rngs import reseed as reseed
from .rngs import restore_rngs as restore_rngs
from .rngs import split_rngs as split_rngs
from .rngs import with_rngs as with_rngs
from .safetensors import load_safetensors as load_safetensors
from .safetensors import load_safetensors_dict as load_safetensors_dict
from .safetensors import safetensors_metadata as safetensors_metadata
from .safetensors import save_safetensors as save_safetensors
from .spmd import PARTITION_NAME as PARTITION_NAME
from .spmd import abstract_with_sharding as abstract_with_sharding
from .spmd import as_abstract as as_abstract
from .spmd import get_named_sharding as get_named_sharding
from .spmd import get_partition_spec as get_partition_spec
from .spmd import logical_axis_rules as logical_axis_rules
from .spmd import use_eager_sharding as use_eager_sharding
from .spmd import using_eager_sharding as using_eager_sharding
from .spmd import with_partitioning as with_partitioning
from .state import FlatState as FlatState
from .state import State as State
from .state import from_flat_state as from_flat_state
from .state import merge_state as merge_state
from .state import replace_by_pure_dict as replace_by_pure_dict
from .state import restore_int_paths as restore_int_paths
from .state import split_state as split_state
from .state import to_flat_state as to_flat_state
from .state import to_pure_dict as to_pure_dict
from .summary import tabulate as tabulate
from .training import metrics as metrics
from .training import optimizer as optimizer
from .training.ema import EMA as EMA
from .training.metrics import Metric as Metric
from .training.metrics import MultiMetric as MultiMetric
from .training.mixed_precision import DynamicLossScale as DynamicLossScale
from .training.mixed_precision import Policy as Policy
from .training.mixed_precision import apply_policy as apply_policy
from .training.model_and_optimizer import ModelAndOptimizer as ModelAndOptimizer
from .training.optimizer import OptArray as OptArray
from .training.optimizer import Optimizer as Optimizer
from .training.optimizer import OptState as OptState
from .training.optimizer import OptVariable as OptVariable
from .training.train_state import TrainState as TrainState
from .transforms.autodiff import DiffState as DiffState
from .transforms.autodiff import checkpoint as checkpoint
from .transforms.autodiff import custom_vjp as custom_vjp
from .transforms.autodiff import grad as grad
from .transforms.autodiff import jvp as jvp
from .transforms.autodiff import remat as remat
from .transforms.autodiff import value_and_grad as value_and_grad
from .transforms.autodiff import vjp as vjp
from .transforms.control import cond as cond
from .transforms.control import fori_loop as fori_loop
from .transforms.control import switch as switch
from .transforms.control import while_loop as while_loop
from .transforms.jit import JitWrapped as JitWrapped
from .transforms.jit import StateSharding as StateSharding
from .transforms.jit import cached_partial as cached_partial
from .transforms.jit import jit as jit
from .transforms.jit import jit_partial as jit_partial
from .transforms.parallel import pmap as pmap
from .transforms.parallel import shard_map as shard_map
from .transforms.scan import Carry as Carry
from .transforms.scan import scan as scan
from .transforms.tracing import checkify as checkify
from .transforms.tracing import eval_shape as eval_shape
from .transforms.tracing import get_abstract_model as get_abstract_model
from .transforms.tracing import make_jaxpr as make_jaxpr
from .transforms.vmap import StateAxes as StateAxes
from .transforms.vmap import transform_metadata as transform_metadata
from .transforms.vmap import vmap as vmap
from .var_modes import var_defaults as var_defaults
from .var_modes import vars_as as vars_as
from .var_modes import with_vars as with_vars
from .variablelib import A as A
from .variablelib import BatchStat as BatchStat
from .variablelib import Cache as Cache
from .variablelib import Intermediate as Intermediate
from .variablelib import Param as Param
from .variablelib import Perturbation as Perturbation
from .variablelib import Variable as Variable
from .variablelib import VariableMetadata as VariableMetadata
from .variablelib import register_variable_name as register_variable_name
from .variablelib import variable_name_from_type as variable_name_from_type
from .variablelib import variable_type_from_name as variable_type_from_name
from .variablelib import with_metadata as with_metadata
from .views import capture as capture
from .views import view as view
from .views import view_info as view_info
from .views import with_attributes as with_attributes


def __getattr__(name: str) -> _builtins.object:
    # `nnx.bridge` (and flax's alias `nnx.wrappers`) need flax.linen: imported on first use
    # only, so `import nnx` never imports flax. Without flax, nnx.bridge raises
    # LinenNotInstalledError with the install command.
    if name in ("bridge", "wrappers"):
        import importlib

        bridge = importlib.import_module(".bridge", __name__)
        return bridge if name == "bridge" else bridge.wrappers
    raise AttributeError(f"module 'nnx' has no attribute {name!r}")
