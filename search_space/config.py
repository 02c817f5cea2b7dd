"""The search-space config: the one typed config this layer owns (orchestrator/ composes it)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

from search_space.primitives import OP_SPECS, PRIMITIVES, ZERO

POOLS = ("mean", "max")

MAX_CELLS = 16


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class SearchSpaceConfig:
    """Width, maximum depth, cell size and candidate ops of the search space."""

    # Read by pydantic when this dataclass is a field of the job schema: unknown keys fail.
    # A plain dict so this layer need not import pydantic.
    __pydantic_config__: ClassVar[dict[str, Any]] = {"extra": "forbid"}

    embed_dim: int = 128
    k_max: int = 8
    num_nodes: int = 3
    primitives: tuple[str, ...] = PRIMITIVES
    dropout: float = 0.1
    # Every op's output through a per-token LayerNorm without affine, so ops compete on one scale.
    op_norm: bool = True
    # Supernet only: the convs of one dilation share one super-kernel (conv_3 and conv_5 are the
    # centre taps of conv_7), so each trains whenever any of its family is sampled.
    shared_kernels: bool = True
    # How each cell's output becomes the vector its probe and the head read: "max" over real tokens (as
    # Kim's sentence CNNs) or "mean". Max lifted the hand cell 1.1 dev and 0.7 test points, 4 seeds (docs/experiments.md).
    pool: str = "max"
    # None: a token table of width embed_dim. r: LadaBERT's low-rank table, (V, r) rows times an (r, embed_dim)
    # map, initialised from the SVD of the projected teacher table: V*r + r*embed_dim parameters, not V*embed_dim.
    embedding_rank: int | None = None
    # None: as above. k: KroneckerBERT's table, a sum of k Kronecker products over the whole vocabulary
    # (search_space.layers.KroneckerTable: k * (v1*d1 + v2*d2) parameters), fitted to the projected teacher table.
    embedding_kronecker: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.primitives, str):
            raise ValueError("primitives must be a list of op names, not one string")
        # YAML and JSON give lists; a tuple keeps the frozen config hashable.
        object.__setattr__(self, "primitives", tuple(self.primitives))
        if not _is_int(self.embed_dim) or self.embed_dim <= 0:
            raise ValueError(f"embed_dim must be a positive int, got {self.embed_dim!r}")
        if not _is_int(self.k_max) or not 1 <= self.k_max <= MAX_CELLS:
            raise ValueError(f"k_max must be an int in 1..{MAX_CELLS}, got {self.k_max!r}")
        if not _is_int(self.num_nodes) or self.num_nodes < 1:
            raise ValueError(f"num_nodes must be an int >= 1, got {self.num_nodes!r}")
        unknown = [p for p in self.primitives if p not in OP_SPECS]
        if unknown:
            raise ValueError(f"unknown primitives {unknown}; known: {list(OP_SPECS)}")
        if len(set(self.primitives)) != len(self.primitives):
            raise ValueError(f"primitives has duplicates: {list(self.primitives)}")
        if not any(p != ZERO for p in self.primitives):
            raise ValueError(f"primitives needs at least one op other than {ZERO!r}")
        if self.embedding_rank is not None and (not _is_int(self.embedding_rank)
                                                or not 0 < self.embedding_rank < self.embed_dim):
            raise ValueError(f"embedding_rank must be null or an int in 1..{self.embed_dim - 1} (below embed_dim), "
                             f"got {self.embedding_rank!r}")
        if self.embedding_kronecker is not None:
            if not _is_int(self.embedding_kronecker) or self.embedding_kronecker < 1:
                raise ValueError(f"embedding_kronecker must be null or a positive int, got {self.embedding_kronecker!r}")
            if self.embedding_rank is not None:
                raise ValueError("set embedding_rank or embedding_kronecker, not both: they are two factorisations "
                                 "of the same table")
        if self.pool not in POOLS:
            raise ValueError(f"pool must be one of {list(POOLS)}, got {self.pool!r}")
        for flag in ("op_norm", "shared_kernels"):
            if not isinstance(getattr(self, flag), bool):
                raise ValueError(f"{flag} must be true or false, got {getattr(self, flag)!r}")
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["primitives"] = list(self.primitives)  # JSON-friendly
        for key in ("embedding_rank", "embedding_kronecker"):  # left out when unset: the keys of students and
            if d[key] is None:                                  # searches saved before they existed hold
                del d[key]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SearchSpaceConfig:
        known = {f.name for f in fields(cls)}
        extra = sorted(set(d) - known)
        if extra:
            raise ValueError(f"unknown search-space keys {extra}; known: {sorted(known)}")
        return cls(**d)


INITS = ("projected", "teacher")
TEACHER_LR = 1e-4


@dataclass(frozen=True)
class TransformerConfig:
    """One member of the family. init "projected": the teacher's table projected to `hidden` (PCA),
    layers random; "teacher": the teacher's table, positions and bottom `layers` layers, which needs
    the teacher's own hidden size and head width, at most its heads and at most its ffn (a narrower
    member keeps the strongest)."""

    __pydantic_config__: ClassVar[dict[str, Any]] = {"extra": "forbid"}

    layers: int = 2
    hidden: int = 128
    heads: int = 2
    # None: hidden // heads. Set it to keep fewer heads than a teacher at the teacher's own width (init
    # "teacher" keeps its `heads` strongest): the attention's projections are then heads x head_dim wide.
    head_dim: int | None = None
    ffn: int = 512
    dropout: float = 0.1
    init: str = "projected"
    # None: a token table of width hidden; r: a rank-r table (LadaBERT), as `space.embedding_rank` for cells.
    embedding_rank: int | None = None
    # None: the retrain's lr from scratch, TEACHER_LR from the teacher's layers (a fine-tuning rate: on
    # rotten_tomatoes L2-H384 scored 78.52 dev at 1e-4 and 76.75 at the cells' 2e-3).
    lr: float | None = None
    # None: the retrain's epochs. A member cut narrower than the teacher needs longer to recover: on
    # rotten_tomatoes L2-H384 with ffn 384 scored 76.64 dev after 2 epochs and 77.89 after 4.
    epochs: int | None = None
    # Keep the token table as initialised: no optimiser state for its V x hidden weights, and tokens the
    # train split never shows stay where the teacher put them, beside those it does.
    freeze_table: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.freeze_table, bool):
            raise ValueError(f"transformer freeze_table must be true or false, got {self.freeze_table!r}")
        for name in ("layers", "hidden", "heads", "ffn"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 1:
                raise ValueError(f"transformer {name} must be a positive int, got {getattr(self, name)!r}")
        if self.head_dim is not None and (not _is_int(self.head_dim) or self.head_dim < 1):
            raise ValueError(f"transformer head_dim must be null or a positive int, got {self.head_dim!r}")
        if self.head_dim is None and self.hidden % self.heads:
            raise ValueError(f"transformer hidden ({self.hidden}) must be a multiple of heads ({self.heads})")
        if self.init not in INITS:
            raise ValueError(f"transformer init must be one of {list(INITS)}, got {self.init!r}")
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"transformer dropout must be in [0, 1), got {self.dropout!r}")
        if self.lr is not None and (not isinstance(self.lr, (int, float)) or isinstance(self.lr, bool)
                                    or self.lr <= 0):
            raise ValueError(f"transformer lr must be null or a positive number, got {self.lr!r}")
        if self.epochs is not None and (not _is_int(self.epochs) or self.epochs < 1):
            raise ValueError(f"transformer epochs must be null or a positive int, got {self.epochs!r}")
        if self.embedding_rank is not None and (not _is_int(self.embedding_rank)
                                                or not 0 < self.embedding_rank < self.hidden):
            raise ValueError(f"transformer embedding_rank must be null or an int in 1..{self.hidden - 1}, "
                             f"got {self.embedding_rank!r}")

    def learning_rate(self, retrain_lr: float) -> float:
        return self.lr if self.lr is not None else TEACHER_LR if self.init == "teacher" else retrain_lr

    def train_epochs(self, retrain_epochs: int) -> int:
        return retrain_epochs if self.epochs is None else self.epochs

    @property
    def head_width(self) -> int:
        return self.hidden // self.heads if self.head_dim is None else self.head_dim

    @property
    def name(self) -> str:
        """Short and stable: the route's name on the Pareto plot and in the registry."""
        rank = "" if self.embedding_rank is None else f"-r{self.embedding_rank}"
        ffn = "" if self.ffn == 4 * self.hidden else f"-F{self.ffn}"  # BERT's 4x is the unnamed default
        heads = "" if self.head_dim is None else f"-A{self.heads}x{self.head_dim}"
        return (f"L{self.layers}-H{self.hidden}{heads}{ffn}{rank}-{self.init}"
                f"{'-frozen-table' if self.freeze_table else ''}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["head_dim"] is None:  # the dict keys students' folders: members from before head_dim keep theirs
            del d["head_dim"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TransformerConfig:
        extra = sorted(set(d) - {f.name for f in fields(cls)})
        if extra:
            raise ValueError(f"unknown transformer keys {extra}")
        return cls(**d)
