"""The search space as pure torch and data: ops, cells, supernet, genotype, student, cost model.

Names are imported on first use (PEP 562), so `import search_space.config` (the CLI's job schema)
does not import torch; `from search_space import Supernet` works as before.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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
    from search_space.layers import StudentOutput, project_embeddings
    from search_space.ops import OPS, PRIMITIVES
    from search_space.student import Student
    from search_space.supernet import MixedOp, SearchCell, Supernet, SupernetOutput

# exported name -> the submodule that defines it
_EXPORTS = {
    "SearchSpaceConfig": "config",
    "OpCost": "cost",
    "efficiency_loss": "cost",
    "expected_flops": "cost",
    "expected_params": "cost",
    "genotype_params_flops": "cost",
    "normalised_cost_vector": "cost",
    "op_costs": "cost",
    "Genotype": "genotype",
    "derive_genotype": "genotype",
    "edge_index": "genotype",
    "num_edges": "genotype",
    "TemperatureSchedule": "gumbel",
    "gumbel_softmax": "gumbel",
    "project_embeddings": "layers",
    "OPS": "ops",
    "PRIMITIVES": "primitives",
    "Student": "student",
    "StudentOutput": "layers",
    "MixedOp": "supernet",
    "SearchCell": "supernet",
    "Supernet": "supernet",
    "SupernetOutput": "supernet",
}

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


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
