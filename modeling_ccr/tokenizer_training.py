"""Train a small multilingual sub-word tokenizer from captions, for models trained from scratch.

Nothing can be downloaded from the Hub here, so models built on the embedded data need a tokenizer made
from its own captions. Text is split on whitespace (marked with "▁", so it decodes back) and punctuation
and learned as BPE sub-words; every CJK ideograph and kana is its own piece (as BERT does for Chinese), so
any Chinese or Japanese character seen in training is in the vocabulary and never becomes [UNK].

Why BPE and not the WordPiece trainer: in tokenizers <= 0.23 ``WordPieceTrainer`` (and ``BpeTrainer`` with a
continuing-subword prefix) assigns ids to "##" pieces in hash-map order and breaks merge ties by id, so the
same texts give a different vocabulary from run to run (huggingface/tokenizers#1794). Without a prefix every
initial symbol is an alphabet character with a sorted id, and training is deterministic.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
# CJK ideographs (+ extension A, compatibility), kana, the prolonged-sound mark, CJK punctuation.
CJK_CHARACTER = Regex(
    "[\u3000-\u303f\u3040-\u309f\u30a0-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]"
    "|[\U00020000-\U0002fa1f]"
)


def _build_tokenizer(vocab_size: int, min_frequency: int) -> tuple[Tokenizer, trainers.BpeTrainer]:
    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True),
            pre_tokenizers.Split(CJK_CHARACTER, behavior="isolated"),
            pre_tokenizers.Punctuation(behavior="isolated"),
        ]
    )
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        show_progress=False,
    )
    return tokenizer, trainer


def train_tokenizer(
    texts: Iterable[str], vocab_size: int = 8000, model_max_length: int = 64, min_frequency: int = 1
) -> PreTrainedTokenizerFast:
    """A BERT-style tokenizer (BPE sub-words) trained on ``texts``: [CLS] text [SEP], NFKC + lowercase.

    Returns a ``PreTrainedTokenizerFast`` that saves with ``save_pretrained`` and reloads with
    ``AutoTokenizer.from_pretrained``; it gives ``input_ids`` and ``attention_mask`` only, and truncates
    to ``model_max_length`` when called with ``truncation=True``. Same texts, same tokenizer.
    """
    if isinstance(texts, str):
        raise TypeError("texts must be an iterable of strings, not a single string")
    texts = list(texts)
    if not texts:
        raise ValueError("train_tokenizer needs at least one text")
    bad = next((t for t in texts if not isinstance(t, str)), None)
    if bad is not None:
        raise TypeError(f"every text must be a str, got {type(bad).__name__}")
    if vocab_size <= len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must exceed the {len(SPECIAL_TOKENS)} special tokens, got {vocab_size}")
    if model_max_length < 3:
        raise ValueError(f"model_max_length must leave room for [CLS] text [SEP], got {model_max_length}")

    tokenizer, trainer = _build_tokenizer(vocab_size, min_frequency)
    tokenizer.train_from_iterator(texts, trainer=trainer, length=len(texts))
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=model_max_length,
        padding_side="right",
        truncation_side="right",
        model_input_names=["input_ids", "attention_mask"],
    )
