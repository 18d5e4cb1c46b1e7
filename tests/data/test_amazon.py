"""End-to-end and bad-input tests for the Amazon 2014/2018/2023 converters.

Every fixture is a few lines written here in the real schema of its format.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from recbole_bifair.data.amazon import (
    ConversionReport,
    convert_amazon,
    detect_amazon_files,
    genre_from_categories,
    main,
)
from recbole_bifair.data.atomic import parse_header, read_atomic
from recbole_bifair.errors import DataError, UnknownNameError


def write_gz(path: Path, lines: list[str]) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write("".join(line + "\n" for line in lines))
    return path


def review(user: str, asin: str, rating: float, time: int) -> str:
    return json.dumps(
        {
            "reviewerID": user,
            "asin": asin,
            "overall": rating,
            "unixReviewTime": time,
            "reviewText": "fine",
            "summary": "ok",
            "helpful": [0, 0],
        }
    )


# Shared scenario: u1 rates A twice (latest wins), C has no title, D has no metadata, B has
# no category list, E's only path is the bare root.
REVIEWS = [
    review("u1", "A", 5.0, 100),
    review("u1", "B", 3.0, 150),
    review("u1", "A", 2.0, 300),
    review("u2", "A", 4.0, 200),
    review("u2", "C", 1.0, 210),
    review("u2", "D", 4.0, 220),
    review("u3", "E", 5.0, 230),
]


def fixture_2014(folder: Path, reviews: list[str] = REVIEWS) -> Path:
    write_gz(folder / "reviews_Video_Games_5.json.gz", reviews)
    write_gz(
        folder / "meta_Video_Games.json.gz",
        [
            "{'asin': 'A', 'title': \"Zelda: Link's Awakening\", 'price': 9.99, "
            "'categories': [['Video Games', 'Nintendo', 'Game Boy'], ['Toys', 'Games']]}",
            "{'asin': 'B', 'title': 'Tetris'}",
            "{'asin': 'C', 'categories': [['Video Games', 'PC']]}",
            "{'asin': 'E', 'title': 'Pong', 'categories': [['Video Games']]}",
            "{'asin': 'Z', 'title': 'Never rated', 'categories': [['Video Games', 'PC']]}",
        ],
    )
    return folder


def fixture_2018(folder: Path) -> Path:
    write_gz(folder / "Books_5.json.gz", REVIEWS)
    meta = [
        {"asin": "A", "title": "Dune", "category": ["Books", "Science Fiction & Fantasy", "SF"]},
        {"asin": "B", "title": "Emma", "category": ["Books", "Literature &amp; Fiction"]},
        {"asin": "C", "title": "", "category": ["Books", "History"]},
        {"asin": "E", "title": "Ulysses", "category": []},
    ]
    write_gz(folder / "meta_Books.json.gz", [json.dumps(record) for record in meta])
    return folder


def fixture_2023(folder: Path) -> Path:
    rows = [
        ("u1", "PA", "A1", 5.0, 1_600_000_000_000),
        ("u1", "PA", "A2", 3.0, 1_600_000_500_000),  # another variant of PA: duplicate pair
        ("u2", "PB", "B1", 4.0, 1_600_000_100_000),
        ("u2", "PC", "C1", 2.0, 1_600_000_200_000),
        ("u3", "PX", "X1", 1.0, 1_600_000_300_000),  # PX has no metadata
    ]
    write_gz(
        folder / "Video_Games.jsonl.gz",
        [
            json.dumps(
                {
                    "rating": r,
                    "title": "t",
                    "text": "x",
                    "images": [],
                    "asin": asin,
                    "parent_asin": parent,
                    "user_id": user,
                    "timestamp": ts,
                    "helpful_vote": 0,
                    "verified_purchase": True,
                }
            )
            for user, parent, asin, r, ts in rows
        ],
    )
    meta = [
        {
            "main_category": "Video Games",
            "title": "Halo",
            "parent_asin": "PA",
            "categories": ["Video Games", "Xbox One", "Games"],
        },
        {
            "main_category": "Video Games",
            "title": "Doom",
            "parent_asin": "PB",
            "categories": ["PC", "Games"],
        },
        {"main_category": "Video Games", "title": "Myst", "parent_asin": "PC", "categories": []},
    ]
    write_gz(folder / "meta_Video_Games.jsonl.gz", [json.dumps(record) for record in meta])
    return folder


def convert(category: str, source, out: Path, **kwargs) -> ConversionReport:
    return convert_amazon(category, source, out, progress=False, **kwargs)


def read_output(out: Path):
    inter = read_atomic(out / f"{out.name}.inter")
    item = read_atomic(out / f"{out.name}.item")
    return inter, item


# ----------------------------------------------------------------------------- end to end


def test_2014_reviews_end_to_end(tmp_path):
    out = tmp_path / "games_raw"
    report = convert("games", fixture_2014(tmp_path), out)
    inter, item = read_output(out)
    assert parse_header(out / "games_raw.inter") == [
        ("user_id", "token"),
        ("item_id", "token"),
        ("rating", "float"),
        ("timestamp", "float"),
    ]
    assert parse_header(out / "games_raw.item") == [
        ("item_id", "token"),
        ("title", "token_seq"),
        ("genre", "token"),
    ]
    rows = sorted(inter[["user_id", "item_id", "rating", "timestamp"]].itertuples(index=False))
    assert [tuple(row) for row in rows] == [
        ("u1", "A", 2.0, 300.0),  # the later of the two u1/A ratings
        ("u1", "B", 3.0, 150.0),
        ("u2", "A", 4.0, 200.0),
        ("u3", "E", 5.0, 230.0),
    ]
    items = {row.item_id: (row.title, row.genre) for row in item.itertuples()}
    assert items == {
        "A": ("Zelda: Link's Awakening", "Nintendo"),
        "B": ("Tetris", "Other"),  # no categories field
        "E": ("Pong", "Other"),  # nothing below the root
    }
    assert (report.fmt, report.users, report.items, report.interactions) == ("2014", 3, 3, 4)
    assert report.records_read == 7
    assert report.duplicates_dropped == 1
    assert report.no_metadata_dropped == 1  # u2/D
    assert (report.untitled_items_dropped, report.untitled_interactions_dropped) == (1, 1)
    assert report.inter_path == out / "games_raw.inter" and report.item_path.is_file()
    assert "users 3, items 3, interactions 4" in report.summary()


def test_2014_ratings_csv_and_name(tmp_path):
    (tmp_path / "ratings_Movies_and_TV.csv").write_text(
        "u1,M1,5.0,1000\nu2,M1,3.0,1001\nu2,M2,4.0,1002\nu1,M1,1.0,900\n"
    )
    write_gz(
        tmp_path / "meta_Movies_and_TV.json.gz",
        [
            "{'asin': 'M1', 'title': 'Alien', 'categories': [['Movies & TV', 'Science Fiction']]}",
            "{'asin': 'M2', 'title': 'Heat', 'categories': [['CDs & Vinyl', 'Rock'], "
            "['Movies & TV', 'Drama']]}",
        ],
    )
    out = tmp_path / "out" / "folder"
    report = convert("movies", tmp_path, out, name="movies_raw")
    inter = read_atomic(out / "movies_raw.inter")
    item = read_atomic(out / "movies_raw.item")
    got = {(r.user_id, r.item_id): (r.rating, r.timestamp) for r in inter.itertuples()}
    assert got == {
        ("u1", "M1"): (5.0, 1000.0),
        ("u2", "M1"): (3.0, 1001.0),
        ("u2", "M2"): (4.0, 1002.0),
    }  # u1/M1 at 900 is older and dropped
    assert dict(zip(item.item_id, item.genre, strict=True)) == {
        "M1": "Science Fiction",
        "M2": "Drama",
    }
    assert report.fmt == "2014" and report.duplicates_dropped == 1


def test_2018_end_to_end(tmp_path):
    out = tmp_path / "books_raw"
    report = convert("books", fixture_2018(tmp_path), out)
    inter, item = read_output(out)
    assert sorted(zip(inter.user_id, inter.item_id, strict=True)) == [
        ("u1", "A"),
        ("u1", "B"),
        ("u2", "A"),
        ("u3", "E"),
    ]
    assert inter.loc[(inter.user_id == "u1") & (inter.item_id == "A"), "rating"].item() == 2.0
    items = {row.item_id: (row.title, row.genre) for row in item.itertuples()}
    assert items == {
        "A": ("Dune", "Science Fiction & Fantasy"),
        "B": ("Emma", "Literature & Fiction"),  # HTML entity unescaped
        "E": ("Ulysses", "Other"),  # empty category list
    }
    assert report.fmt == "2018" and report.untitled_items_dropped == 1  # C has title ""
    assert report.no_metadata_dropped == 1


def test_2023_end_to_end_uses_parent_asin_and_seconds(tmp_path):
    out = tmp_path / "games_raw"
    report = convert("games", fixture_2023(tmp_path), out)
    inter, item = read_output(out)
    got = {(r.user_id, r.item_id): (r.rating, r.timestamp) for r in inter.itertuples()}
    assert got == {
        ("u1", "PA"): (3.0, 1_600_000_500.0),
        ("u2", "PB"): (4.0, 1_600_000_100.0),
        ("u2", "PC"): (2.0, 1_600_000_200.0),
    }
    items = {row.item_id: (row.title, row.genre) for row in item.itertuples()}
    assert items == {"PA": ("Halo", "Xbox One"), "PB": ("Doom", "PC"), "PC": ("Myst", "Other")}
    assert (report.fmt, report.users, report.no_metadata_dropped) == ("2023", 2, 1)


def test_genre_rule():
    assert genre_from_categories([["Toys", "Games"], ["Video Games", "PC"]], "Video Games") == "PC"
    assert genre_from_categories([["Toys", "Games"]], "Video Games") == "Other"
    assert genre_from_categories(["Books", "History", "Europe"], "Books") == "History"
    assert genre_from_categories(["History", "Europe"], "Books") == "History"
    assert genre_from_categories(["Movies &amp; TV", "Drama"], "Movies & TV") == "Drama"
    assert genre_from_categories(["Books"], "Books") == "Other"
    assert genre_from_categories([], "Books") == "Other"
    assert genre_from_categories(None, "Books") == "Other"


# ----------------------------------------------------------------------------- detection


def test_detect_formats_and_explicit_files(tmp_path):
    assert detect_amazon_files("games", fixture_2014(tmp_path)).fmt == "2014"
    files = detect_amazon_files(
        "books", [fixture_2018(tmp_path) / "Books_5.json.gz", tmp_path / "meta_Books.json.gz"]
    )
    assert (files.fmt, files.interactions.name) == ("2018", "Books_5.json.gz")


def test_detect_prefers_five_core(tmp_path):
    fixture_2018(tmp_path)
    write_gz(tmp_path / "Books.json.gz", REVIEWS)
    assert detect_amazon_files("books", tmp_path).interactions.name == "Books_5.json.gz"


def test_detect_lists_expected_names_when_nothing_found(tmp_path):
    (tmp_path / "readme.txt").write_text("nothing here")
    with pytest.raises(DataError) as caught:
        detect_amazon_files("games", tmp_path)
    message = str(caught.value)
    for name in (
        "reviews_Video_Games_5.json.gz",
        "ratings_Video_Games.csv",
        "Video_Games_5.json.gz",
        "Video_Games.jsonl.gz",
        "meta_Video_Games.jsonl.gz",
    ):
        assert name in message


def test_detect_missing_meta_and_ambiguous_and_unknown(tmp_path):
    write_gz(tmp_path / "Video_Games.jsonl.gz", ["{}"])
    with pytest.raises(DataError, match="meta_Video_Games.jsonl.gz"):
        detect_amazon_files("games", tmp_path)
    fixture_2023(tmp_path)
    fixture_2014(tmp_path)
    with pytest.raises(DataError, match="--format"):
        detect_amazon_files("games", tmp_path)
    assert detect_amazon_files("games", tmp_path, fmt="2023").fmt == "2023"
    with pytest.raises(UnknownNameError, match="games"):
        detect_amazon_files("gmaes", tmp_path)
    with pytest.raises(DataError, match="not found"):
        detect_amazon_files("games", [tmp_path / "absent.json.gz"])


# ----------------------------------------------------------------------------- bad input


def truncated_reviews(folder: Path, n_lines: int = 3000) -> int:
    """Write 2014 reviews whose gzip stream is cut in the middle; return the full line count."""
    lines = [review(f"u{i}", "A", 5.0, i) for i in range(n_lines)]
    path = write_gz(folder / "reviews_Video_Games_5.json.gz", lines)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return n_lines


def test_truncated_gzip_keeps_what_was_read(tmp_path):
    fixture_2014(tmp_path)
    total = truncated_reviews(tmp_path)
    with pytest.warns(UserWarning, match=r"reviews_Video_Games_5\.json\.gz.*truncated") as caught:
        report = convert("games", tmp_path, tmp_path / "out")
    assert 0 < report.records_read < total
    assert f"after line {report.records_read} " in str(caught[0].message)
    assert report.truncated_files == ["reviews_Video_Games_5.json.gz"]
    assert len(read_atomic(tmp_path / "out" / "out.inter")) == report.records_read


def test_truncated_gzip_strict_raises(tmp_path):
    fixture_2014(tmp_path)
    truncated_reviews(tmp_path)
    with pytest.raises(DataError, match=r"reviews_Video_Games_5\.json\.gz.*after line \d+"):
        convert("games", tmp_path, tmp_path / "out", strict=True)
    assert not (tmp_path / "out").exists()


def test_malformed_json_lines_are_counted_and_skipped(tmp_path):
    reviews = [
        *REVIEWS[:2],
        '{"reviewerID": "u9", "asin": ',
        *REVIEWS[2:],
        "[1, 2]",
        json.dumps({"reviewerID": "u9", "asin": "A"}),
    ]  # lines 3, 9 and 10 are bad
    fixture_2014(tmp_path, reviews)
    with pytest.warns(UserWarning, match=r"skipped 3 malformed lines \(lines 3, 9, 10\)"):
        report = convert("games", tmp_path, tmp_path / "out")
    assert report.malformed_lines == {"reviews_Video_Games_5.json.gz": 3}
    assert report.interactions == 4 and report.records_read == 7


def test_malformed_line_strict_names_file_and_line(tmp_path):
    fixture_2014(tmp_path, [*REVIEWS[:2], "not json", *REVIEWS[2:]])
    with pytest.raises(DataError, match=r"reviews_Video_Games_5\.json\.gz: line 3 "):
        convert("games", tmp_path, tmp_path / "out", strict=True)


def test_meta_literal_is_never_evaluated(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fixture_2014(tmp_path)
    meta = gzip.open(tmp_path / "meta_Video_Games.json.gz", "rt").read().splitlines()
    evil = "{'asin': 'B', 'title': open('pwned.txt', 'w').write('x')}"
    write_gz(tmp_path / "meta_Video_Games.json.gz", [evil, *meta])
    with pytest.warns(UserWarning, match=r"meta_Video_Games\.json\.gz: skipped 1 .*lines 1\)"):
        report = convert("games", tmp_path, tmp_path / "out")
    assert not (tmp_path / "pwned.txt").exists()
    assert report.malformed_lines == {"meta_Video_Games.json.gz": 1} and report.items == 3


def test_existing_output_is_refused_unless_overwrite(tmp_path):
    fixture_2014(tmp_path)
    out = tmp_path / "games_raw"
    out.mkdir()
    (out / "games_raw.inter").write_text("old")
    with pytest.raises(DataError, match="--overwrite"):
        convert("games", tmp_path, out)
    assert (out / "games_raw.inter").read_text() == "old"
    convert("games", tmp_path, out, overwrite=True)
    assert len(read_atomic(out / "games_raw.inter")) == 4
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_nothing_left_is_an_error_and_writes_nothing(tmp_path):
    write_gz(tmp_path / "reviews_Video_Games_5.json.gz", [review("u1", "Q", 5.0, 1)])
    write_gz(tmp_path / "meta_Video_Games.json.gz", ["{'asin': 'A', 'title': 'x'}"])
    with pytest.raises(DataError, match="no interactions left"):
        convert("games", tmp_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- command


def test_main_prints_summary(tmp_path, capsys):
    fixture_2023(tmp_path)
    out = tmp_path / "games_raw"
    assert main(["--category", "games", "--input", str(tmp_path), "--output", str(out)]) == 0
    assert "users 2, items 3, interactions 3" in capsys.readouterr().out
    assert (out / "games_raw.item").is_file()


def test_command_errors_are_one_line_exit_2(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "recbole_bifair.data.amazon",
            "--category",
            "books",
            "--input",
            str(tmp_path),
            "--output",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
        env={"OMP_NUM_THREADS": "1", "PATH": ""},
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert "meta_Books.jsonl.gz" in result.stderr


def test_corrupt_gzip_data_is_reported(tmp_path):
    fixture_2014(tmp_path)
    path = tmp_path / "reviews_Video_Games_5.json.gz"
    data = bytearray(path.read_bytes())
    start = data.index(b"\0", 10) + 1  # the header ends with the stored file name
    data[start : start + 10] = b"\xff" * 10  # an invalid deflate block
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"json\.gz: compressed file is .*corrupt after line 0"):
        convert("games", tmp_path, tmp_path / "out", strict=True)
