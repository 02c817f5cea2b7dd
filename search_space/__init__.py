"""The search space as pure torch and data: ops, cells, supernet, genotype, student, cost model."""

from search_space.config import SearchSpaceConfig
from search_space.cost import (
    OpCost,
    efficiency_loss,
    expected_flops,
    expected_params,
    genotype_params_flops,
    normalised_cost_vector,
    op_costs,
)
from search_space.genotype import Genotype, derive_genotype, edge_index, num_edges
from search_space.gumbel import TemperatureSchedule, gumbel_softmax
from search_space.layers import project_embeddings
from search_space.ops import OPS, PRIMITIVES
from search_space.student import Student, StudentOutput
from search_space.supernet import MixedOp, SearchCell, Supernet, SupernetOutput

__all__ = [
    "OPS",
    "PRIMITIVES",
    "Genotype",
    "MixedOp",
    "OpCost",
    "SearchCell",
    "SearchSpaceConfig",
    "Student",
    "StudentOutput",
    "Supernet",
    "SupernetOutput",
    "TemperatureSchedule",
    "derive_genotype",
    "edge_index",
    "efficiency_loss",
    "expected_flops",
    "expected_params",
    "genotype_params_flops",
    "gumbel_softmax",
    "num_edges",
    "op_costs",
    "normalised_cost_vector",
    "project_embeddings",
]
