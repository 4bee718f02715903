"""The caption tokenizer: CJK coverage, BERT-style template, save/load, truncation, determinism."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from modeling_ccr.tokenizer_training import SPECIAL_TOKENS, train_tokenizer

TEXTS = [
    "red apple",
    "apple | fruit | red",
    "roter Apfel",
    "Apfel | Frucht | Obst | rot",
    "pomme rouge",
    "červené jablko",
    "红苹果",
    "健康 | 水果 | 红 | 苹果",
    "赤リンゴ",
    "アップル | りんご | 果物",
    "dog face",
    "Hundegesicht",
    "tête de chien",
    "狗脸",
    "犬の顔",
] * 3


def _tokens(tokenizer, text: str) -> list[str]:
    return tokenizer.convert_ids_to_tokens(tokenizer(text)["input_ids"])


def test_cjk_seen_characters_never_unknown():
    tokenizer = train_tokenizer(TEXTS, vocab_size=300)
    for text in ("红苹果", "りんご", "赤リンゴ", "苹果红", "犬りんご"):
        tokens = _tokens(tokenizer, text)
        assert "[UNK]" not in tokens, (text, tokens)
        assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]"
    # a CJK character never seen in training is unknown on its own, without swallowing its neighbours
    tokens = _tokens(tokenizer, "红鲨果")
    assert tokens.count("[UNK]") == 1 and "红" in tokens and "果" in tokens


def test_special_tokens_template_and_inputs():
    tokenizer = train_tokenizer(TEXTS, vocab_size=300, model_max_length=16)
    assert [tokenizer.convert_ids_to_tokens(i) for i in range(len(SPECIAL_TOKENS))] == list(SPECIAL_TOKENS)
    assert (tokenizer.pad_token, tokenizer.unk_token, tokenizer.cls_token, tokenizer.sep_token, tokenizer.mask_token) == (
        "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
    )
    encoded = tokenizer(["Roter APFEL", "ｒｏｔｅｒ apfel", "pomme"], padding=True)
    assert set(encoded) == {"input_ids", "attention_mask"}
    assert encoded["input_ids"][0] == encoded["input_ids"][1]  # NFKC + lowercase
    assert encoded["input_ids"][2][-1] == tokenizer.pad_token_id and encoded["attention_mask"][2][-1] == 0
    assert tokenizer.decode(tokenizer("roter Apfel 红苹果")["input_ids"], skip_special_tokens=True) == "roter apfel 红苹果"


def test_truncation_at_model_max_length():
    tokenizer = train_tokenizer(TEXTS, vocab_size=300, model_max_length=8)
    ids = tokenizer(" ".join(["apple"] * 50), truncation=True)["input_ids"]
    assert len(ids) == 8
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id


def test_save_load_round_trip(tmp_path):
    tokenizer = train_tokenizer(TEXTS, vocab_size=300, model_max_length=12)
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    queries = ["roter Apfel", "pomme rouge", "红苹果", "りんご", "zzz unseen"]
    assert loaded(queries, padding=True) == tokenizer(queries, padding=True)
    assert loaded.model_max_length == 12
    assert list(loaded.model_input_names) == ["input_ids", "attention_mask"]
    assert loaded.mask_token == "[MASK]" and loaded.pad_token_id == tokenizer.pad_token_id


def test_deterministic():
    texts = [f"{word} {i % 7}" for i, word in enumerate(" ".join(TEXTS).split())]
    first = train_tokenizer(texts, vocab_size=200)
    for _ in range(3):
        again = train_tokenizer(texts, vocab_size=200)
        assert again.backend_tokenizer.to_str() == first.backend_tokenizer.to_str()


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"texts": "one string"}, TypeError),
        ({"texts": []}, ValueError),
        ({"texts": ["ok", 3]}, TypeError),
        ({"texts": ["ok"], "vocab_size": 5}, ValueError),
        ({"texts": ["ok"], "model_max_length": 2}, ValueError),
    ],
)
def test_bad_input(kwargs, error):
    with pytest.raises(error):
        train_tokenizer(**kwargs)
