"""nnx: object-oriented, mutable neural-network modules on JAX.

Every public name is re-exported here explicitly; nothing is defined in this file.
"""

from . import errors as errors
from . import filters as filterlib  # noqa: F401 - flax name
from . import graph as graph
from . import state as statelib  # noqa: F401 - flax name
from . import variables as variableslib  # noqa: F401 - flax name
from .errors import NNXError as NNXError
from .errors import TraceContextError as TraceContextError
from .filters import All as All
from .filters import Any as Any
from .filters import Everything as Everything
from .filters import Not as Not
from .filters import Nothing as Nothing
from .filters import OfType as OfType
from .filters import PathContains as PathContains
from .filters import WithTag as WithTag
from .graph import GraphDef as GraphDef
from .graph import call as call
from .graph import clone as clone
from .graph import flatten as flatten
from .graph import graphdef as graphdef
from .graph import is_node as is_node
from .graph import iter_children as iter_children
from .graph import iter_graph as iter_graph
from .graph import merge as merge
from .graph import pop as pop
from .graph import split as split
from .graph import state as state
from .graph import unflatten as unflatten
from .graph import update as update
from .module import Module as Module
from .pytreelib import Dict as Dict
from .pytreelib import List as List
from .pytreelib import Object as Object
from .pytreelib import Pytree as Pytree
from .pytreelib import data as data
from .pytreelib import static as static
from .rngs import RngCount as RngCount
from .rngs import RngKey as RngKey
from .rngs import Rngs as Rngs
from .rngs import RngState as RngState
from .rngs import RngStream as RngStream
from .rngs import reseed as reseed
from .rngs import restore_rngs as restore_rngs
from .rngs import split_rngs as split_rngs
from .state import FlatState as FlatState
from .state import State as State
from .state import from_flat_state as from_flat_state
from .state import merge_state as merge_state
from .state import replace_by_pure_dict as replace_by_pure_dict
from .state import to_flat_state as to_flat_state
from .state import to_pure_dict as to_pure_dict
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
from .transforms.jit import jit as jit
from .transforms.scan import Carry as Carry
from .transforms.scan import scan as scan
from .transforms.tracing import checkify as checkify
from .transforms.tracing import eval_shape as eval_shape
from .transforms.tracing import make_jaxpr as make_jaxpr
from .transforms.vmap import PARTITION_NAME as PARTITION_NAME
from .transforms.vmap import StateAxes as StateAxes
from .transforms.vmap import vmap as vmap
from .variables import BatchStat as BatchStat
from .variables import Cache as Cache
from .variables import Intermediate as Intermediate
from .variables import Param as Param
from .variables import Perturbation as Perturbation
from .variables import Variable as Variable
from .variables import register_variable_name as register_variable_name
from .variables import variable_name_from_type as variable_name_from_type
from .variables import variable_type_from_name as variable_type_from_name
