"""The clients people already use, on a folder saved like train.py saves one, in a fresh process without the
package (`python -I`): CLIPProcessor's call, pipeline("zero-shot-image-classification"), sentence-transformers,
dtype and attention options; and the same from a repo id at a pinned revision of the (fake) Hub."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from _hub_server import FakeHub
from _push_helpers import IMAGE_CODE, TOKEN, USER, run_fresh, run_push_cli, write_real_model_folder

from modeling_ccr.retrieval import compute_retrieval_ranks, ranks_from_scores

TEXTS = ["a red apple", "ein Hund im Park", "笑脸", "ein lächelndes Gesicht", "一个红苹果", "a dog in the park"]
TEXT_IMAGE_IDS = [0, 1, 2, 2, 0, 1]
TEXT_LANGUAGES = ["en", "de", "zh", "de", "zh", "en"]
LABELS = ["Apfel", "Hund", "Gesicht"]
TEMPLATE = "Ein Foto von {}."

CLIENTS = """
import json, sys, torch
from transformers import AutoModel, AutoProcessor, pipeline
from sentence_transformers import SentenceTransformer
SOURCE, REVISION, TEXTS, LABELS, TEMPLATE = {source!r}, {revision!r}, {texts!r}, {labels!r}, {template!r}
{image_code}
hub = dict(trust_remote_code=True, revision=REVISION)
out = {{}}

processor = AutoProcessor.from_pretrained(SOURCE, **hub)
batch = processor(text=TEXTS[:2], images=images[0], return_tensors="pt", padding=True, truncation=True)
out["clip_call"] = {{k: list(v.shape) for k, v in batch.items()}}
padded = processor(text=TEXTS, padding="max_length", max_length=12, return_tensors="np", return_attention_mask=False)
out["max_length_call"] = {{k: list(v.shape) for k, v in padded.items()}}
try:
    processor(text=TEXTS, paddin=True)
except TypeError as err:
    out["unknown_error"] = str(err)

classifier = pipeline("zero-shot-image-classification", model=SOURCE, **hub)
out["pipeline_class"] = type(classifier.model).__module__
out["zero_shot"] = [classifier(image, candidate_labels=LABELS, hypothesis_template=TEMPLATE) for image in images]

st = SentenceTransformer(SOURCE, **hub)
text_emb, image_emb = st.encode(TEXTS, convert_to_tensor=True), st.encode(images, convert_to_tensor=True)
out["st_text"], out["st_image"] = text_emb.tolist(), image_emb.tolist()
out["st_similarity"] = st.similarity(image_emb, text_emb).tolist()

def features(model):  # float32 pixels from the processor also feed a bf16 / fp16 model
    with torch.no_grad():
        return (model.get_image_features(**processor(images=images)).float().tolist(),
                model.get_text_features(**processor(text=TEXTS)).float().tolist())

default = AutoModel.from_pretrained(SOURCE, **hub).eval()
out["attn_default"] = [default.config._attn_implementation, default.vision_model.config._attn_implementation,
                       default.text_model.config._attn_implementation]
for attn in ("eager", "sdpa"):
    model = AutoModel.from_pretrained(SOURCE, attn_implementation=attn, **hub).eval()
    out["attn_" + attn] = features(model)
    out["attn_used_" + attn] = [model.vision_model.config._attn_implementation,
                                model.text_model.config._attn_implementation]
for name, dtype in (("bfloat16", torch.bfloat16), ("float16", torch.float16)):
    model = AutoModel.from_pretrained(SOURCE, dtype=dtype, **hub).eval()
    out["dtype_" + name] = [str(model.dtype), features(model)]
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clients") / "ccr-tiny"
    model, processor = write_real_model_folder(folder)
    return folder, model, processor


def _images():
    scope: dict = {}
    exec(IMAGE_CODE, scope)
    return scope["images"]


def _run(source: str, revision: str | None, hub_url: str, workdir) -> dict:
    code = CLIENTS.format(source=source, revision=revision, texts=TEXTS, labels=LABELS, template=TEMPLATE,
                          image_code=IMAGE_CODE)
    result = run_fresh(code, hub_url, workdir)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _expected(model, processor) -> dict:
    images = _images()
    with torch.no_grad():
        image = model.get_image_features(**processor(images=images))
        text = model.get_text_features(**processor(text=TEXTS))
        labels = model.get_text_features(**processor(text=[TEMPLATE.format(x) for x in LABELS]))
    image_n, text_n, labels_n = (torch.nn.functional.normalize(x, dim=-1) for x in (image, text, labels))
    return {"image": image, "text": text, "image_n": image_n, "text_n": text_n,
            "label_probs": (image_n @ labels_n.T / model.temperature.detach()).softmax(dim=-1)}


def _check(got: dict, model, processor) -> None:
    want = _expected(model, processor)
    assert got["clip_call"] == {"input_ids": [2, got["clip_call"]["input_ids"][1]],
                                "attention_mask": got["clip_call"]["input_ids"], "pixel_values": [1, 3, 16, 16]}
    assert got["max_length_call"] == {"input_ids": [len(TEXTS), 12]}
    assert "['paddin']" in got["unknown_error"]

    # zero-shot pipeline: German labels and template, scores sum to 1 and equal the model's softmax
    assert got["pipeline_class"].startswith("transformers_modules.")
    for row, probs in zip(got["zero_shot"], want["label_probs"]):
        assert sorted(r["label"] for r in row) == sorted(LABELS)
        assert sum(r["score"] for r in row) == pytest.approx(1.0, abs=1e-6)
        by_label = {r["label"]: r["score"] for r in row}
        np.testing.assert_allclose([by_label[x] for x in LABELS], probs.numpy(), atol=1e-5)

    # sentence-transformers: normalised embeddings of texts in any language and of PIL images
    np.testing.assert_allclose(got["st_text"], want["text_n"].numpy(), atol=1e-5)
    np.testing.assert_allclose(got["st_image"], want["image_n"].numpy(), atol=1e-5)
    st_ranks = ranks_from_scores(np.array(got["st_similarity"]), TEXT_IMAGE_IDS, TEXT_LANGUAGES)
    own_ranks = compute_retrieval_ranks(want["image"], want["text"], TEXT_IMAGE_IDS, TEXT_LANGUAGES)
    np.testing.assert_array_equal(st_ranks.tr_ranks, own_ranks.tr_ranks)
    np.testing.assert_array_equal(st_ranks.ir_ranks, own_ranks.ir_ranks)

    # attention implementations agree; sdpa is the default; half precisions load and embed
    assert got["attn_default"] == ["sdpa", "sdpa", "sdpa"]
    assert got["attn_used_eager"] == ["eager", "eager"] and got["attn_used_sdpa"] == ["sdpa", "sdpa"]
    for attn in ("eager", "sdpa"):
        np.testing.assert_allclose(got["attn_" + attn][0], want["image"].numpy(), atol=1e-5)
        np.testing.assert_allclose(got["attn_" + attn][1], want["text"].numpy(), atol=1e-5)
    for name in ("bfloat16", "float16"):
        dtype, (image, text) = got["dtype_" + name]
        assert dtype == f"torch.{name}"
        for half, full in ((image, want["image_n"]), (text, want["text_n"])):
            cosine = torch.nn.functional.cosine_similarity(torch.tensor(half), full, dim=-1)
            assert (cosine > 0.99).all(), (name, cosine)


def test_saved_folder_carries_the_pipeline_and_sentence_transformers_entries(saved):
    folder, _, _ = saved
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"]["AutoModelForZeroShotImageClassification"] == "modeling_ccr.CCRModel"
    modules = json.loads((folder / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[1] for m in modules] == ["Transformer", "Normalize"]
    assert (folder / "sentence_transformers_ccr.py").is_file()  # imported by modeling_ccr.py: shipped with it
    assert json.loads((folder / "config_sentence_transformers.json").read_text())["similarity_fn_name"] == "cosine"


def test_clients_on_a_saved_folder_in_a_fresh_process(saved, tmp_path):
    folder, model, processor = saved
    _check(_run(str(folder), None, "http://127.0.0.1:9", tmp_path / "user"), model, processor)


def test_clients_from_a_repo_id_at_a_pinned_revision(saved, tmp_path):
    folder, model, processor = saved
    with FakeHub(tokens={TOKEN: USER}) as hub:
        pushed = run_push_cli([str(folder), "--repo-id", "ns/ccr-clients"], hub.url, tmp_path / "pusher")
        assert pushed.returncode == 0, pushed.stderr[-3000:]
        oid = re.search(r"^commit hash: ([0-9a-f]{40})$", pushed.stdout, re.M).group(1)
        got = _run("ns/ccr-clients", oid, hub.url, tmp_path / "user")
        resolved = [r for r in hub.requests if "/resolve/" in r[1]]
        assert resolved and all(f"/resolve/{oid}/" in r[1] for r in resolved)
    _check(got, model, processor)


def test_model_card_metadata_and_usage_for_the_clients(saved):
    from huggingface_hub import ModelCard

    folder, _, _ = saved
    card = ModelCard((folder / "README.md").read_text())  # what train.py / push.py render
    assert card.data.pipeline_tag == "zero-shot-image-classification"
    assert card.data.library_name == "transformers"
    assert card.data.language == ["en", "de", "zh"]
    assert {"sentence-transformers", "zero-shot-image-classification", "custom_code"} <= set(card.data.tags)
    assert card.data.datasets == ["emoji_ccr"]
    assert 'pipeline("zero-shot-image-classification", model=repo, revision=revision, trust_remote_code=True)' in card.text
    assert "SentenceTransformer(repo, revision=revision, trust_remote_code=True)" in card.text
