"""The prepared-data format and the TargetSplit batch reader shared by every trainer."""

import pyarrow as pa
import pytest
import torch

from workers.dataset import (
    SPLITS,
    PreparedMeta,
    TargetSplit,
    is_prepared,
    load_split,
    pad_id_lists,
    read_meta,
    split_table,
    teacher_inputs,
    write_prepared,
)

META = PreparedMeta(task="t", label_names=("neg", "pos"), pair=True, max_length=16, metric="accuracy",
                    fingerprint="f" * 16, tokenizer="tok", pad_id=0, cls_id=101, sep_id=102, vocab_size=200,
                    sizes={})


def table(n=5):
    return split_table(ids=list(range(n)), labels=[i % 2 for i in range(n)], texts_a=[f"a{i}" for i in range(n)],
                       texts_b=[f"b{i}" for i in range(n)], ids_a=[[5 + i] * (i + 1) for i in range(n)],
                       ids_b=[[9] * (n - i) for i in range(n)])


def test_pad_id_lists_pads_truncates_and_handles_sliced_arrays():
    lists = pa.array([[1, 2, 3], [4], [5, 6]], pa.list_(pa.int32()))
    ids, lengths = pad_id_lists(lists, pad_id=0)
    assert ids.tolist() == [[1, 2, 3], [4, 0, 0], [5, 6, 0]] and lengths.tolist() == [3, 1, 2]
    ids, lengths = pad_id_lists(lists.slice(1), pad_id=-1, width=1)
    assert ids.tolist() == [[4], [5]] and lengths.tolist() == [1, 1]


def test_write_prepared_round_trips_and_leaves_no_temp_folder(tmp_path):
    out = write_prepared(tmp_path / "p", meta=META, tables={s: table() for s in SPLITS})
    assert is_prepared(out) and read_meta(out) == META
    assert [p.name for p in tmp_path.iterdir()] == ["p"]
    split = load_split(out, "dev")
    assert split.ids_a[2].tolist()[:3] == [7, 7, 7] and split.len_b.tolist() == [5, 4, 3, 2, 1]


def test_write_prepared_needs_every_split_and_writes_nothing_otherwise(tmp_path):
    with pytest.raises(ValueError, match="missing"):
        write_prepared(tmp_path / "p", meta=META, tables={"train": table()})
    assert list(tmp_path.iterdir()) == []


def test_teacher_inputs_build_cls_a_sep_b_sep_with_segments(tmp_path):
    split = load_split(write_prepared(tmp_path / "p", meta=META, tables={s: table(3) for s in SPLITS}), "train")
    batch = split.batch(torch.tensor([0, 2]))
    out = teacher_inputs(batch, cls_id=101, sep_id=102, pad_id=0)
    assert out["input_ids"][0].tolist() == [101, 5, 102, 9, 9, 9, 102]
    assert out["token_type_ids"][0].tolist() == [0, 0, 0, 1, 1, 1, 1]
    assert out["attention_mask"][1].tolist() == [1] * 7


@pytest.mark.parametrize("group_by_length", [False, True])
def test_batches_cover_every_example_once(group_by_length):
    n = 500
    lengths = torch.randint(1, 60, (n,), generator=torch.Generator().manual_seed(0))
    split = TargetSplit(example_ids=torch.arange(n), ids_a=torch.ones(n, 64, dtype=torch.int32), len_a=lengths,
                        labels=torch.zeros(n, dtype=torch.long))
    batches = list(split.batches(batch_size=32, shuffle=True, seed=3, group_by_length=group_by_length))
    assert sorted(torch.cat([b["example_ids"] for b in batches]).tolist()) == list(range(n))
    for b in batches:  # dynamic padding: each batch is as wide as its longest row
        assert b["ids_a"].shape[1] == int(b["mask_a"].sum(1).max())


def test_grouping_by_length_cuts_padding():
    n = 2000
    lengths = torch.randint(1, 60, (n,), generator=torch.Generator().manual_seed(0))
    split = TargetSplit(example_ids=torch.arange(n), ids_a=torch.ones(n, 64, dtype=torch.int32), len_a=lengths,
                        labels=torch.zeros(n, dtype=torch.long))
    padded = {g: sum(b["ids_a"].numel() for b in split.batches(batch_size=32, shuffle=True, group_by_length=g))
              for g in (False, True)}
    assert padded[True] < 0.7 * padded[False]
