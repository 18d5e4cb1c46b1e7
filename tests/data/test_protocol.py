"""The paper's data protocol on small frames and on the real ml-100k and games files."""

from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers import SHARED_DATA

from recbole_bifair.data.atomic import read_atomic, write_atomic
from recbole_bifair.data.protocol import (
    ProtocolOptions,
    apply_protocol,
    main,
    prepare_dataset,
    split_per_user,
)
from recbole_bifair.errors import DataError


def toy_interactions(n_users=6, per_user=10, seed=0):
    rows = []
    for user in range(n_users):
        for item in range(per_user):
            rows.append((f"u{user}", f"i{(user + item) % 15}", float(1 + (user + item) % 5), float(item)))
    return pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])


def test_split_is_reproducible_disjoint_and_4_3_3():
    frame = toy_interactions()
    first = split_per_user(frame, "user_id", (0.4, 0.3, 0.3), seed=7)
    again = split_per_user(frame, "user_id", (0.4, 0.3, 0.3), seed=7)
    other = split_per_user(frame, "user_id", (0.4, 0.3, 0.3), seed=8)
    for name in first:
        pd.testing.assert_frame_equal(first[name], again[name])
    assert any(not first[n].equals(other[n]) for n in first)
    for user, train in first["train"].groupby("user_id"):
        valid = first["valid"][first["valid"].user_id == user]
        test = first["test"][first["test"].user_id == user]
        assert (len(train), len(valid), len(test)) == (4, 3, 3)
        pairs = [set(zip(part.user_id, part.item_id, strict=True)) for part in (train, valid, test)]
        assert not (pairs[0] & pairs[1] or pairs[0] & pairs[2] or pairs[1] & pairs[2])


def test_filters_ratings_short_users_duplicates_and_unseen_items():
    frame = toy_interactions(n_users=4, per_user=10)
    # A user with too few interactions, a duplicate pair (the later one must win) and an item
    # that can only appear outside train.
    extra = pd.DataFrame(
        [("short", "i1", 5.0, 0.0), ("u0", "i0", 1.0, 99.0), ("u1", "only_once", 5.0, 1.0)],
        columns=frame.columns,
    )
    frame = pd.concat([frame, extra], ignore_index=True)
    options = ProtocolOptions(min_user_inter=5, genre_field=None)
    splits, dropped = apply_protocol(frame, None, options)
    everything = pd.concat(splits.values())
    assert (everything.rating >= 3).all()
    assert "short" not in set(everything.user_id)
    # u0's (u0, i0) was re-rated 1.0 later: the latest copy wins, then the rating filter drops it.
    assert not ((everything.user_id == "u0") & (everything.item_id == "i0")).any()
    assert dropped["duplicate_pairs"] == 1
    train_items = set(splits["train"].item_id)
    assert set(splits["valid"].item_id) <= train_items and set(splits["test"].item_id) <= train_items


def test_prepare_writes_atomic_files_and_refuses_to_overwrite(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    frame = toy_interactions()
    write_atomic(frame, source / "toy.inter", {"user_id": "token", "item_id": "token",
                                                "rating": "float", "timestamp": "float"})
    items = pd.DataFrame({"item_id": [f"i{k}" for k in range(15)],
                          "title": [f"Title {k}" for k in range(15)],
                          "genre": ["Action Comedy" if k % 2 else "Drama" for k in range(15)]})
    write_atomic(items, source / "toy.item", {"item_id": "token", "title": "token_seq", "genre": "token_seq"})
    out = tmp_path / "out"
    options = ProtocolOptions(min_user_inter=5)
    prepared = prepare_dataset(source / "toy.inter", source / "toy.item", out, "toy", options,
                               tau=0.2, dataset_yaml_dir=tmp_path / "yaml")
    for part in ("train", "valid", "test"):
        assert (out / "toy" / f"toy.{part}.inter").is_file()
    train = read_atomic(out / "toy" / "toy.train.inter")
    assert len(train) == len(prepared.splits["train"])
    assert set(read_atomic(out / "toy" / "toy.item").item_id) == set(train.item_id)
    config = yaml.safe_load((tmp_path / "yaml" / "toy.yaml").read_text())
    assert config["benchmark_filename"] == ["train", "valid", "test"]
    assert config["genre_field"] == "genre" and config["tau"] == 0.2
    before = (out / "toy" / "toy.train.inter").read_bytes()
    with pytest.raises(DataError, match="--overwrite"):
        prepare_dataset(source / "toy.inter", source / "toy.item", out, "toy", options,
                        dataset_yaml_dir=tmp_path / "yaml")
    assert (out / "toy" / "toy.train.inter").read_bytes() == before
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp folder left


def test_missing_genre_field_is_named(tmp_path, capsys):
    code = main(["--input", "ml-100k", "--name", "x", "--output", str(tmp_path),
                 "--title_field", "movie_title", "--genre_field", "genre"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "'genre'" in err and "--genre_field" in err


def test_ml100k_statistics(ml100k_root):
    train = read_atomic(ml100k_root / "ml100k" / "ml100k.train.inter")
    assert train.user_id.nunique() == 845  # RECBOLE_NOTES.md: 845 users after the protocol
    sizes = [len(read_atomic(ml100k_root / "ml100k" / f"ml100k.{p}.inter")) for p in ("train", "valid", "test")]
    assert sum(sizes) == 80962 - 120 - 103  # 80,962 kept, minus unseen valid/test items
    assert set(read_atomic(ml100k_root / "ml100k" / "ml100k.item").columns) == {"item_id", "movie_title", "class"}


@pytest.mark.skipif(not (SHARED_DATA / "amazon-games-2018").is_dir(), reason="shared games data absent")
def test_games_shared_data(tmp_path):
    code = main(["--input", str(SHARED_DATA / "amazon-games-2018"), "--name", "games", "--output",
                 str(tmp_path), "--title_field", "title", "--genre_field", "platform",
                 "--min_user_inter", "20", "--min_rating", "0", "--tau", "0.2"])
    assert code == 0
    train = read_atomic(tmp_path / "games" / "games.train.inter")
    assert train.user_id.nunique() == 2699  # PROVENANCE.md: 2,699 users with >= 20 interactions


def test_group_summary_keeps_a_token_genre_whole_and_takes_the_first_of_a_sequence():
    from recbole_bifair.data.protocol import PreparedDataset, group_summary

    items = pd.DataFrame({"item_id": ["a", "b", "c"], "genre": ["Xbox 360", "PC", "Xbox One"]})
    train = pd.DataFrame({"user_id": ["u", "u", "v"], "item_id": ["a", "b", "c"]})
    prepared = PreparedDataset("x", Path("."), {"train": train}, items)
    options = ProtocolOptions(genre_field="genre")
    items.attrs["atomic_types"] = {"item_id": "token", "genre": "token"}
    assert group_summary(prepared, options).splitlines()[-1].endswith("3 groups, sizes Xbox 360=1, PC=1, Xbox One=1")
    items.attrs["atomic_types"]["genre"] = "token_seq"  # space-separated list: its first entry
    assert group_summary(prepared, options).splitlines()[-1].endswith("2 groups, sizes Xbox=2, PC=1")
