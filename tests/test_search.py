"""Image search: build_index.py / search.py and modeling_ccr.search, on a tiny model trained in the test."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _search_helpers import RED_APPLE, trained_search_model
from datasets import Dataset, Features, Value, concatenate_datasets, load_from_disk
from datasets import Image as ImageFeature

from modeling_ccr.cli import run_cli
from modeling_ccr.emoji_dataset import load_emoji_ccr
from modeling_ccr.retrieval import compute_retrieval_ranks
from modeling_ccr.search import (
    GallerySearch,
    IndexSpec,
    build_index,
    gallery_from_dataset,
    load_gallery,
    load_model,
)

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "hub_scripts" / "build_index.py"
SEARCH = ROOT / "hub_scripts" / "search.py"


def _run(script: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """The command in a fresh process, as a user runs it."""
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=timeout)


def _main(script: Path, *args: str, capsys) -> tuple[int, str, str]:
    """The command's main() in this process (fast: no new interpreter): exit status, stdout, stderr."""
    spec = importlib.util.spec_from_file_location(f"_cli_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    status = run_cli(module.main, list(args))  # the commands' top-level handler, as `sys.exit(run_cli(main))`
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture(scope="module")
def trained():
    return trained_search_model()


@pytest.fixture(scope="module")
def small_index(trained, tmp_path_factory):
    model_dir, gallery_dir = trained
    out = tmp_path_factory.mktemp("index") / "small"
    done = _run(BUILD, str(model_dir), str(gallery_dir), "--out", str(out), "--no-progress")
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def emoji_index(trained, tmp_path_factory):
    """Every EmojiCCR image and caption (the default gallery)."""
    out = tmp_path_factory.mktemp("index") / "emoji"
    done = _run(BUILD, str(trained[0]), "--out", str(out), "--no-progress")
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"indexed {1580} images" in done.stdout
    return out


def test_index_folder_holds_datasets_and_faiss_indexes(small_index, trained):
    info = json.loads((small_index / "index_info.json").read_text())
    assert info["num_images"] == 24 and info["model"] == str(trained[0].resolve())
    assert info["languages"] == ["cs", "de", "en", "fr", "ja", "zh"] and info["index"]["images"]["kind"] == "flat"
    images = load_from_disk(str(small_index / "images"))
    assert images.column_names == ["image_id", "image", "embedding"] and len(images) == 24
    vectors = np.asarray(images["embedding"], dtype=np.float64)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    captions = load_from_disk(str(small_index / "captions"))
    assert set(captions.column_names) == {"image_id", "language", "text", "embedding"}
    assert len(captions) == info["num_captions"] > 24
    assert (small_index / "images.faiss").is_file() and (small_index / "captions.faiss").is_file()
    assert not [p for p in small_index.parent.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_text_query_in_several_languages_finds_the_red_apple(small_index, capsys):
    done = _run(SEARCH, str(small_index), "roter Apfel", "--k", "3", "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["query_kind"] == "text" and [hit["rank"] for hit in result["hits"]] == [1, 2, 3]
    assert RED_APPLE in [hit["id"] for hit in result["hits"]], result
    for query in ("red apple", "pomme rouge", "红苹果"):
        status, out, err = _main(SEARCH, str(small_index), query, "--k", "3", "--json", capsys=capsys)
        assert status == 0, err
        hits = json.loads(out)["hits"]
        assert RED_APPLE in [hit["id"] for hit in hits], (query, hits)
        scores = [hit["score"] for hit in hits]
        assert scores == sorted(scores, reverse=True)
    status, out, _ = _main(SEARCH, str(small_index), "roter Apfel", "--k", "2", capsys=capsys)
    assert status == 0 and len(out.strip().splitlines()) == 2
    rank, image_id, score = out.split()[:3]
    assert rank == "1" and image_id == result["hits"][0]["id"] and float(score) == pytest.approx(result["hits"][0]["score"], abs=1e-4)


def test_image_query_finds_itself_and_its_captions(small_index, tmp_path, capsys):
    search = GallerySearch(small_index)
    path = tmp_path / "apple.png"
    search.image(RED_APPLE).save(path)
    status, out, err = _main(SEARCH, str(small_index), str(path), "--k", "5", "--json", capsys=capsys)
    hits = json.loads(out)["hits"]
    assert hits[0]["id"] == RED_APPLE and hits[0]["score"] == pytest.approx(1.0, abs=1e-5)
    status, out, err = _main(SEARCH, str(small_index), str(path), "--captions", "--per-language", "--k", "2", "--json",
                             capsys=capsys)
    assert status == 0, err
    hits = json.loads(out)["hits"]
    assert sorted({h["language"] for h in hits}) == search.languages
    assert all(sum(h["language"] == lang for h in hits) == 2 for lang in search.languages)
    german = search.search_captions(path, k=3, languages=["de"])
    assert [h.rank for h in german] == [1, 2, 3] and {h.language for h in german} == {"de"}
    assert german[0].id == RED_APPLE and german[0].text
    # The same as an exact search over the German captions alone (near-ties may swap places).
    captions = search.captions
    rows = [i for i, lang in enumerate(captions["language"]) if lang == "de"]
    exact = dict(zip((captions["text"][i] for i in rows),
                     np.asarray(captions["embedding"])[rows] @ search.encode_image(path)[0]))
    np.testing.assert_allclose([h.score for h in german], sorted(exact.values(), reverse=True)[:3], atol=1e-5)
    np.testing.assert_allclose([h.score for h in german], [exact[h.text] for h in german], atol=1e-5)


def test_flat_index_top_k_equals_the_exact_ranking_on_emoji_ccr(emoji_index, trained):
    """The flat FAISS index returns the package's own exact IR ranking (compute_retrieval_ranks)."""
    model, processor = load_model(str(trained[0]))
    gallery = load_gallery(None)
    with torch.no_grad():
        image_features = torch.cat([
            model.get_image_features(**processor(images=gallery[start:start + 256]["image"]))
            for start in range(0, len(gallery), 256)
        ])
        queries = [(row, c["language"], c["text"]) for row, caps in enumerate(gallery["captions"]) if row % 7 == 0
                   for c in caps]
        text_features = model.get_text_features(**processor(text=[text for _, _, text in queries]))
    k = 10
    exact = compute_retrieval_ranks(image_features, text_features, np.array([row for row, _, _ in queries]),
                                    [lang for _, lang, _ in queries], top_k=k)
    unit_images = torch.nn.functional.normalize(image_features.double(), dim=-1)
    unit_texts = torch.nn.functional.normalize(text_features.double(), dim=-1)
    search = GallerySearch(emoji_index)
    hits = search.search_vectors(unit_texts.float().numpy(), k=k)
    row_of = {image_id: row for row, image_id in enumerate(gallery["image_id"])}
    identical = 0
    for position, text_index in enumerate(exact.text_indices):
        expected = exact.ir_topk[position]
        found = np.array([row_of[h.id] for h in hits[text_index]])
        scores = (unit_images @ unit_texts[text_index]).numpy()
        np.testing.assert_allclose([h.score for h in hits[text_index]], scores[expected], atol=1e-5)
        np.testing.assert_allclose(scores[found], scores[expected], atol=1e-5)
        # Same ids in the same order; only images whose scores tie (near-identical emoji at 32 px) may swap.
        swapped = found != expected
        assert np.all(np.abs(scores[found[swapped]] - scores[expected[swapped]]) < 1e-5), queries[text_index]
        identical += not swapped.any()
    assert identical >= 0.9 * len(exact.text_indices)
    assert search.info["num_captions"] == sum(len(c) for c in gallery["captions"])


def test_approximate_indexes_agree_with_flat_when_they_search_everything(trained, tmp_path):
    model_dir, gallery_dir = trained
    model, processor = load_model(str(model_dir))
    gallery = load_gallery(gallery_dir)
    flat = GallerySearch(build_index(model, processor, gallery, tmp_path / "flat", progress=False), model, processor)
    ivf = GallerySearch(build_index(model, processor, gallery, tmp_path / "ivf", IndexSpec("ivf", nlist=4, nprobe=4),
                                    progress=False), model, processor)
    hnsw = GallerySearch(build_index(model, processor, gallery, tmp_path / "hnsw", IndexSpec("hnsw"), progress=False),
                         model, processor)
    assert ivf.info["index"]["images"]["kind"] == "ivf" and hnsw.info["index"]["captions"]["kind"] == "hnsw"
    for query in ("roter Apfel", "Birne", "lachendes Gesicht"):
        expected = [(h.id, round(h.score, 5)) for h in flat.search_text(query, 5)]
        assert [(h.id, round(h.score, 5)) for h in ivf.search_text(query, 5)] == expected
        assert [(h.id, round(h.score, 5)) for h in hnsw.search_text(query, 5)] == expected


def test_galleries_of_plain_image_files_and_of_any_image_dataset(trained, tmp_path):
    model, processor = load_model(str(trained[0]))
    emoji = load_emoji_ccr("test").select(range(6))
    folder = tmp_path / "photos" / "album"
    folder.mkdir(parents=True)
    for row in emoji:
        row["image"].save(folder / f"{row['image_id']}.png")
    plain = load_gallery(tmp_path / "photos")
    assert sorted(plain["image_id"]) == sorted(f"album/{i}" for i in emoji["image_id"])
    index = build_index(model, processor, plain, tmp_path / "plain-index", progress=False)
    search = GallerySearch(index, model, processor)
    assert search.captions is None and search.info["num_captions"] == 0
    assert search.search_image(folder / f"{emoji[2]['image_id']}.png", 1)[0].id == f"album/{emoji[2]['image_id']}"
    with pytest.raises(ValueError, match="no captions"):
        search.search_captions(folder / f"{emoji[2]['image_id']}.png")
    # A datasets dataset whose Image column has another name and integer ids.
    features = Features({"picture": ImageFeature(), "id": Value("int64")})
    other = Dataset.from_dict({"picture": emoji["image"], "id": list(range(100, 106))}, features=features)
    other.save_to_disk(str(tmp_path / "other"))
    loaded = load_gallery(tmp_path / "other")
    assert list(loaded["image_id"]) == [str(i) for i in range(100, 106)]
    with pytest.raises(ValueError, match="canonical CCR form"):
        gallery_from_dataset(other.add_column("captions", [["a caption"]] * 6))


def test_bad_input_is_a_clear_error(trained, small_index, tmp_path, capsys):
    done = _run(BUILD, str(trained[0]), str(tmp_path / "missing"), "--out", str(tmp_path / "x"))
    assert done.returncode != 0 and "does not exist" in done.stderr and "Traceback" not in done.stderr
    status, _, err = _main(BUILD, str(trained[0]), str(trained[1]), "--out", str(small_index), capsys=capsys)
    assert status != 0 and "already exists" in err
    status, _, err = _main(SEARCH, str(tmp_path), "roter Apfel", capsys=capsys)
    assert status != 0 and "not a complete search index" in err
    status, _, err = _main(SEARCH, str(small_index), "roter Apfel", "--captions", capsys=capsys)
    assert status != 0 and "needs an image file" in err
    search = GallerySearch(small_index)
    with pytest.raises(ValueError, match="k must be >= 1"):
        search.search_text("Apfel", 0)
    with pytest.raises(ValueError, match="non-empty"):
        search.search_text("  ")
    with pytest.raises(ValueError, match=r"no captions in \['xx'\]"):
        search.search_captions(search.image(RED_APPLE), languages=["xx"])
    with pytest.raises(ValueError, match="unknown index kind"):
        IndexSpec("lsh")


def test_a_failed_build_leaves_no_index(trained, tmp_path):
    model, processor = load_model(str(trained[0]))
    good = load_emoji_ccr("test").select(range(4)).select_columns(["image", "image_id"])
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    bad = Dataset.from_dict({"image": [{"path": str(broken), "bytes": None}], "image_id": ["broken"]}).cast(good.features)
    gallery = concatenate_datasets([good, bad])
    with pytest.raises(Exception, match="broken.png|cannot"):
        build_index(model, processor, gallery, tmp_path / "out", batch_size=2, progress=False)
    assert not (tmp_path / "out").exists()
    assert sorted(os.listdir(tmp_path)) == ["broken.png"]


def test_an_interrupted_build_leaves_no_index(trained, tmp_path, monkeypatch):
    """Interrupted after the images were written (while encoding the captions): nothing that looks complete."""
    import modeling_ccr.search as search_module

    model, processor = load_model(str(trained[0]))
    gallery = load_gallery(trained[1])

    def interrupted(*args, **kwargs):
        assert [p for p in tmp_path.iterdir() if p.name.startswith(".out-")]  # the staging folder exists
        raise KeyboardInterrupt

    monkeypatch.setattr(search_module, "encode_texts", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build_index(model, processor, gallery, tmp_path / "out", progress=False)
    assert os.listdir(tmp_path) == []
