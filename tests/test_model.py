"""CCRModel: composition of towers, the training objectives, features, loading of pretrained towers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import (
    IMAGE_SIZE,
    MAX_POSITIONS,
    make_model,
    make_processor,
    make_tokenizer,
    text_config,
    vision_config,
)
from transformers import AutoModel, CLIPConfig, CLIPModel, ViTModel, XLMRobertaModel

from modeling_ccr import CCRModel, CCROutput, one_to_k_contrastive_loss

TEXT_IMAGE_IDS = torch.tensor([0, 1, 1, 2, 2, 2, 3])  # unequal numbers of languages per image


def make_batch(seed: int = 0, n_images: int = 4) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    tokenizer = make_tokenizer()
    ids = torch.randint(5, len(tokenizer), (7, 8), generator=g)
    ids[:, 0], ids[:, -1] = tokenizer.cls_token_id, tokenizer.sep_token_id
    mask = torch.ones_like(ids)
    mask[4:, 6:] = 0
    ids[4:, 6:] = tokenizer.pad_token_id
    mlm_ids, mlm_labels = ids.clone(), torch.full_like(ids, -100)
    mlm_labels[:, 2] = ids[:, 2]
    mlm_ids[:, 2] = tokenizer.mask_token_id
    return {
        "pixel_values": torch.randn(n_images, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g),
        "input_ids": ids,
        "attention_mask": mask,
        "text_image_ids": TEXT_IMAGE_IDS.clone(),
        "mlm_input_ids": mlm_ids,
        "mlm_labels": mlm_labels,
    }


def _no_dropout(model: CCRModel) -> CCRModel:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model


@pytest.mark.parametrize(
    "vision, text, fusion",
    [("vit", "xlmr", 1), ("swin", "bert", 0), ("clip", "xlmr", 0), ("siglip", "bert", 1), ("swin", "xlmr", 2)],
)
def test_tiny_model_trains(vision, text, fusion):
    model = _no_dropout(make_model(vision, text, num_fusion_layers=fusion)).train()
    batch = make_batch()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4)
    torch.manual_seed(0)
    losses = []
    for _ in range(10):
        out = model(**batch, return_loss=True)
        assert isinstance(out, CCROutput)
        assert torch.isfinite(out.loss)
        if fusion:
            assert out.loss_itc is not None and out.loss_itm is not None and out.loss_mlm is not None
            total = out.loss_itc + out.loss_itm + out.loss_mlm
            torch.testing.assert_close(out.loss, total)
        else:
            assert out.loss_itm is None and out.loss_mlm is None
            torch.testing.assert_close(out.loss, out.loss_itc)
        losses.append(out.loss.item())
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    assert losses[-1] < losses[0] - 0.02, losses
    assert sum(losses[-3:]) < sum(losses[:3]), losses


def test_shapes_and_normalisation():
    model = make_model(num_fusion_layers=1).eval()
    batch = make_batch()
    with torch.no_grad():
        out = model(**batch)
        image_features = model.get_image_features(batch["pixel_values"])
        text_features = model.get_text_features(batch["input_ids"], batch["attention_mask"])
    assert out.loss is None and out.loss_itc is None
    assert out.logits_per_image.shape == (4, 7) and out.logits_per_text.shape == (7, 4)
    assert isinstance(image_features, torch.Tensor) and image_features.shape == (4, 16)
    assert isinstance(text_features, torch.Tensor) and text_features.shape == (7, 16)
    torch.testing.assert_close(out.image_embeds, F.normalize(image_features, dim=-1))
    torch.testing.assert_close(out.text_embeds, F.normalize(text_features, dim=-1))
    torch.testing.assert_close(out.image_embeds.norm(dim=-1), torch.ones(4))
    torch.testing.assert_close(out.logits_per_image, out.image_embeds @ out.text_embeds.t() / model.temperature)
    assert out.vision_model_output is not None and out.text_model_output is not None


@pytest.mark.parametrize("divide_by_k", [False, True])
def test_itc_is_the_shared_one_to_k_loss(divide_by_k):
    model = make_model(itc_divide_by_k=divide_by_k).eval()
    batch = make_batch()
    with torch.no_grad():
        out = model(**batch, return_loss=True)
        expected = one_to_k_contrastive_loss(
            out.image_embeds, out.text_embeds, batch["text_image_ids"], model.temperature, divide_by_k=divide_by_k
        )
    torch.testing.assert_close(out.loss_itc, expected)


def test_loss_weights():
    batch = make_batch()
    outs = {}
    for weights in [(1.0, 1.0, 1.0), (0.5, 2.0, 0.0)]:
        model = make_model(num_fusion_layers=1, itc_weight=weights[0], itm_weight=weights[1], mlm_weight=weights[2])
        torch.manual_seed(1)
        outs[weights] = model.eval()(**batch, return_loss=True)
    a, b = outs[(1.0, 1.0, 1.0)], outs[(0.5, 2.0, 0.0)]
    assert b.loss_mlm is None
    torch.testing.assert_close(b.loss, 0.5 * b.loss_itc + 2.0 * b.loss_itm)
    torch.testing.assert_close(a.loss_itc, b.loss_itc)


def test_cmlm_only_from_given_masked_texts():
    """forward never masks by itself (the one masking rule is modeling_ccr.masking, run by the trainer): without
    mlm_input_ids / mlm_labels there is no CMLM, and half of them is a clear error."""
    batch = make_batch()
    model = make_model(num_fusion_layers=1)
    torch.manual_seed(0)
    with_mlm = model(**batch, return_loss=True)
    assert with_mlm.loss_mlm is not None and torch.isfinite(with_mlm.loss_mlm)
    del batch["mlm_input_ids"], batch["mlm_labels"]
    torch.manual_seed(0)
    without = model(**batch, return_loss=True)
    assert without.loss_mlm is None and without.loss_itm is not None
    torch.testing.assert_close(without.loss, without.loss_itc + without.loss_itm)
    with pytest.raises(ValueError, match="mlm_input_ids and mlm_labels"):
        model(**batch, mlm_input_ids=make_batch()["mlm_input_ids"], return_loss=True)


def test_compute_itc_false_leaves_the_contrastive_loss_to_the_caller():
    model = make_model(num_fusion_layers=1, mlm_weight=0.5)
    batch = make_batch()
    torch.manual_seed(0)
    full = model(**batch, return_loss=True)
    torch.manual_seed(0)
    fusion_only = model(**batch, return_loss=True, compute_itc=False)
    assert fusion_only.loss_itc is None
    torch.testing.assert_close(fusion_only.loss, full.loss_itm + 0.5 * full.loss_mlm)
    torch.testing.assert_close(model.weighted_loss(full.loss_itc, full.loss_itm, full.loss_mlm), full.loss)
    dual = make_model()
    assert dual(**batch, return_loss=True, compute_itc=False).loss is None


def test_dual_encoder_has_no_fusion_parts():
    model = make_model(num_fusion_layers=0)
    names = [name for name, _ in model.named_parameters()]
    assert model.fusion is None
    assert not any(n.startswith(("fusion", "itm_head", "mlm_head", "image_token")) for n in names)
    batch = make_batch()
    with pytest.raises(ValueError, match="num_fusion_layers"):
        model.get_image_tokens(batch["pixel_values"])
    with pytest.raises(ValueError, match="num_fusion_layers"):
        model.itm_scores(torch.zeros(2, 3, 32), batch["input_ids"][:2], batch["attention_mask"][:2])
    # no unused parameters: every parameter gets a gradient from the ITC loss (DDP-safe)
    model(**batch, return_loss=True).loss.backward()
    assert all(p.grad is not None for p in model.parameters()), [n for n, p in model.named_parameters() if p.grad is None]


def test_fusion_encoder_and_heads_are_one_module():
    model = make_model(num_fusion_layers=2)
    fusion_names = {name.split(".")[1] for name, _ in model.named_parameters() if name.startswith("fusion.")}
    assert fusion_names == {"image_token_projection", "image_token_norm", "layers", "itm_head", "mlm_head"}
    assert len(model.fusion.layers) == 2
    outside = [n for n, _ in model.named_parameters() if not n.startswith(("fusion.", "vision_model.", "text_model."))]
    assert sorted(outside) == ["tau", "text_projection.weight", "visual_projection.weight"]


def _renamed(old_key: str) -> str:
    """Where a key of the old layout lives now (written out by hand, not with the model's mapping)."""
    if old_key.startswith("fusion_layers."):
        return "fusion.layers." + old_key[len("fusion_layers."):]
    if old_key.startswith(("image_token_projection.", "image_token_norm.", "itm_head.", "mlm_head.")):
        return "fusion." + old_key
    return old_key


def test_checkpoint_saved_before_the_fusion_module_loads_with_identical_outputs(tmp_path):
    """tests/fixtures/ccr_v0_fusion was saved by the code of 46ebabd (keys fusion_layers.*, itm_head.*, ...)."""
    from safetensors.torch import load_file

    folder = Path(__file__).resolve().parent / "fixtures" / "ccr_v0_fusion"
    old_keys = set(load_file(folder / "model.safetensors"))
    assert "fusion_layers.0.self_attn.q_proj.weight" in old_keys and "itm_head.weight" in old_keys
    model, info = CCRModel.from_pretrained(folder, output_loading_info=True)
    model.eval()
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    fusion_keys = {_renamed(key) for key in old_keys if key.startswith(("fusion_", "image_token_", "itm_", "mlm_"))}
    assert fusion_keys == {key for key in model.state_dict() if key.startswith("fusion.")}
    expected = load_file(folder / "expected_outputs.safetensors")
    with torch.no_grad():
        out = model(input_ids=expected["input_ids"], attention_mask=expected["attention_mask"],
                    pixel_values=expected["pixel_values"], text_image_ids=torch.arange(3),
                    mlm_input_ids=expected["mlm_input_ids"], mlm_labels=expected["mlm_labels"], return_loss=True)
        tokens = model.get_image_tokens(expected["pixel_values"])
        itm = model.itm_scores(tokens, expected["input_ids"], expected["attention_mask"])
    # the weights are the old file's, bit for bit; the outputs match to float rounding (the fixture was computed on
    # another CPU, whose fp32 kernels may round differently: AVX-512 against AVX2)
    state = list(model.state_dict().values())
    for key, value in load_file(folder / "model.safetensors").items():
        assert any(w.shape == value.shape and torch.equal(w, value) for w in state), key
    for name, value in [("image_embeds", out.image_embeds), ("text_embeds", out.text_embeds), ("image_tokens", tokens),
                        ("itm_scores", itm), ("loss_itc", out.loss_itc), ("loss_mlm", out.loss_mlm)]:
        torch.testing.assert_close(value, expected[name], rtol=1e-5, atol=1e-5, msg=name)
    # what it saves loads again, through the Auto classes too
    model.save_pretrained(tmp_path / "resaved")
    again = AutoModel.from_pretrained(tmp_path / "resaved", trust_remote_code=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(again.get_image_tokens(expected["pixel_values"]), tokens, rtol=0, atol=0)
    # a folder saved by today's code loads without any renaming
    fresh = make_model(num_fusion_layers=1)
    fresh.save_pretrained(tmp_path / "new")
    assert "fusion.itm_head.weight" in load_file(tmp_path / "new" / "model.safetensors")
    _assert_same_weights(fresh, CCRModel.from_pretrained(tmp_path / "new"))


def test_fusion_model_uses_all_parameters():
    model = make_model(num_fusion_layers=1)
    torch.manual_seed(0)
    model(**make_batch(), return_loss=True).loss.backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


def test_itm_scores_and_image_tokens():
    model = make_model(num_fusion_layers=2).eval()
    batch = make_batch()
    with torch.no_grad():
        tokens = model.get_image_tokens(batch["pixel_values"])
        assert tokens.shape == (4, (IMAGE_SIZE // 8) ** 2 + 1, 32)
        pairs = tokens[batch["text_image_ids"]]
        scores = model.itm_scores(pairs, batch["input_ids"], batch["attention_mask"])
    assert scores.shape == (7,) and torch.isfinite(scores).all()
    with pytest.raises(ValueError, match="one image per text"):
        model.itm_scores(tokens, batch["input_ids"], batch["attention_mask"])


def test_default_text_image_ids_and_errors():
    model = make_model().eval()
    batch = make_batch()
    with torch.no_grad():
        out = model(pixel_values=batch["pixel_values"], input_ids=batch["input_ids"][:4], return_loss=True)
    assert torch.isfinite(out.loss)
    with pytest.raises(ValueError, match="text_image_ids is required"):
        model(pixel_values=batch["pixel_values"], input_ids=batch["input_ids"], return_loss=True)
    with pytest.raises(ValueError, match="input_ids and pixel_values"):
        model(pixel_values=batch["pixel_values"])


def test_temperature_init_and_clamp():
    model = make_model()
    assert abs(model.temperature.item() - 0.07) < 1e-7
    with torch.no_grad():
        model.tau.fill_(3.0)
    assert model.temperature.item() == 0.5  # clamped when used
    model.train()(**make_batch(), return_loss=True)
    assert model.tau.item() == 0.5  # and the parameter itself is clamped in training


def test_pooling_choices():
    batch = make_batch()
    swin = make_model("swin").eval()  # Swin has no CLS token: "auto" = its average pool = mean of tokens
    with torch.no_grad():
        hidden = swin.vision_model(pixel_values=batch["pixel_values"]).last_hidden_state
        torch.testing.assert_close(
            swin.get_image_features(batch["pixel_values"]), swin.visual_projection(hidden.mean(dim=1))
        )
    vit = make_model(vision_pooling="cls", text_pooling="mean").eval()
    assert vit.vision_model.pooler is None  # unused pooler not built
    with torch.no_grad():
        hidden = vit.vision_model(pixel_values=batch["pixel_values"]).last_hidden_state
        torch.testing.assert_close(vit.get_image_features(batch["pixel_values"]), vit.visual_projection(hidden[:, 0]))
        text_hidden = vit.text_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        mask = batch["attention_mask"][..., None].float()
        mean = (text_hidden.last_hidden_state * mask).sum(1) / mask.sum(1)
        torch.testing.assert_close(
            vit.get_text_features(batch["input_ids"], batch["attention_mask"]), vit.text_projection(mean)
        )


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    a_state, b_state = a.state_dict(), b.state_dict()
    shared = [k for k in a_state if k in b_state]
    assert len(shared) >= 10
    for key in shared:
        torch.testing.assert_close(a_state[key], b_state[key], rtol=0, atol=0, msg=key)


def test_from_vision_text_pretrained_loads_tower_weights(tmp_path):
    torch.manual_seed(3)
    vit = ViTModel(vision_config("vit"))
    xlmr = XLMRobertaModel(text_config("xlmr"))
    vit.save_pretrained(tmp_path / "vit")
    xlmr.save_pretrained(tmp_path / "xlmr")
    model = CCRModel.from_vision_text_pretrained(
        str(tmp_path / "vit"), str(tmp_path / "xlmr"), projection_dim=8, num_fusion_layers=1, text_pooling="cls"
    )
    assert model.config.projection_dim == 8 and model.config.num_fusion_layers == 1
    assert model.config.text_pooling == "cls"  # a config field, not a text tower kwarg
    _assert_same_weights(vit, model.vision_model)
    _assert_same_weights(xlmr, model.text_model)
    # a round trip keeps them
    model.save_pretrained(tmp_path / "ccr")
    reloaded = AutoModel.from_pretrained(tmp_path / "ccr", trust_remote_code=True)
    _assert_same_weights(vit, reloaded.vision_model)


def test_from_vision_text_pretrained_takes_the_clip_vision_tower(tmp_path):
    torch.manual_seed(4)
    clip_config = CLIPConfig(
        vision_config=vision_config("clip").to_dict(),
        text_config={"vocab_size": 99, "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 16},
        projection_dim=16,
    )
    clip = CLIPModel(clip_config)
    clip.save_pretrained(tmp_path / "clip")
    xlmr = XLMRobertaModel(text_config("xlmr"))
    xlmr.save_pretrained(tmp_path / "xlmr")
    model = CCRModel.from_vision_text_pretrained(str(tmp_path / "clip"), str(tmp_path / "xlmr"))
    assert type(model.vision_model).__name__ == "CLIPVisionModel"
    _assert_same_weights(clip.vision_model, model.vision_model)


def test_compose_from_instances():
    torch.manual_seed(5)
    vit, xlmr = ViTModel(vision_config("vit")), XLMRobertaModel(text_config("xlmr"), add_pooling_layer=False)
    model = CCRModel(vision_model=vit, text_model=xlmr)
    assert model.vision_model is vit and model.text_model is xlmr
    assert model.config.vision_config is vit.config


@pytest.mark.parametrize("text", ["xlmr", "bert"])
def test_texts_longer_than_the_text_tower_are_cut_like_the_processor_cuts_them(text):
    """The zero-shot pipeline tokenizes without truncation; the model then takes what its positions allow."""
    model, processor = make_model(text=text).eval(), make_processor()
    texts = [" ".join(["a dog runs in the park"] * 12), "a dog"]
    untruncated = processor.tokenizer(texts, padding=True, return_tensors="pt", return_token_type_ids=False)
    limit = MAX_POSITIONS - (1 if text == "xlmr" else 0)  # XLM-R positions start after padding_idx 0
    assert untruncated["input_ids"].shape[1] > limit
    with torch.no_grad():
        got = model.get_text_features(**untruncated)
        want = model.get_text_features(**processor(text=texts, max_length=limit))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_from_pretrained_refuses_corrupted_nan_weights_naming_the_tensor(tmp_path):
    from safetensors.torch import load_file, save_file

    make_model().save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    weights["text_projection.weight"].view(-1)[3] = float("nan")
    save_file(weights, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"corrupted: text_projection.weight holds 1 NaN/inf value"):
        CCRModel.from_pretrained(tmp_path)


def test_from_pretrained_on_a_non_ccr_folder_names_its_model_type(tmp_path):
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=20,
                         vocab_size=50)).save_pretrained(tmp_path)
    with pytest.raises(TypeError, match=r"model_type 'ccr'\); got model_type 'bert' from .*not a CCR model"):
        CCRModel.from_pretrained(tmp_path)


def test_bf16_autocast_keeps_embeddings_logits_and_loss_in_fp32():
    """Under bf16 autocast the towers run in bf16; embeddings, logits and the 1-to-K loss stay fp32 and finite."""
    from conftest import caption_batch, make_model, make_processor

    model = make_model().train()
    images, captions = caption_batch()
    batch = dict(make_processor()(images=images, captions=captions))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = model(**batch, return_loss=True)
    assert outputs.vision_model_output.pooler_output.dtype == torch.bfloat16  # the towers ran in bf16
    for tensor in (outputs.image_embeds, outputs.text_embeds, outputs.logits_per_image, outputs.loss):
        assert tensor.dtype == torch.float32
    assert torch.isfinite(outputs.loss)
    outputs.loss.backward()
    assert model.tau.grad is not None and torch.isfinite(model.tau.grad)


def _mixed_length_batch(n_short: int = 100, n_long: int = 100, short: int = 4, long: int = 30, seed: int = 0):
    """Right-padded token ids: many short and many long texts, the batch a length-grouped text tower splits."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.cat([torch.randint(2, short + 1, (n_short,), generator=generator),
                         torch.randint(long - 6, long + 1, (n_long,), generator=generator)])
    lengths = lengths[torch.randperm(len(lengths), generator=generator)]
    mask = (torch.arange(long) < lengths[:, None]).long()
    return torch.randint(5, 60, mask.shape, generator=generator) * mask, mask


@pytest.mark.parametrize("text", ["xlmr", "bert"])
@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_a_texts_embedding_and_gradient_do_not_depend_on_the_texts_padded_with_it(text, pooling):
    """The text tower runs a mixed-length batch in length groups: every text's features, and the gradients they
    send to the weights, equal those of the text encoded alone, without padding."""
    from modeling_ccr.modeling_ccr import text_length_groups

    input_ids, mask = _mixed_length_batch()
    assert text_length_groups(mask) is not None and len(text_length_groups(mask)) >= 2
    model = make_model(text=text, text_pooling=pooling).eval()
    weights = torch.randn(input_ids.shape[0], model.config.projection_dim)
    batched = model.get_text_features(input_ids=input_ids, attention_mask=mask)
    (batched * weights).sum().backward()
    batched_grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    alone = []
    for row in range(input_ids.shape[0]):
        length = int(mask[row].sum())
        alone.append(model.get_text_features(input_ids=input_ids[row : row + 1, :length],
                                             attention_mask=mask[row : row + 1, :length]))
    alone = torch.cat(alone)
    (alone * weights).sum().backward()
    torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-5)
    assert batched_grads.keys() == {name for name, p in model.named_parameters() if p.grad is not None}
    scale = max(float(grad.abs().max()) for grad in batched_grads.values())  # some are ~0 (key biases)
    for name, p in model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(batched_grads[name], p.grad, rtol=1e-4, atol=1e-5 * scale, msg=name)


def test_forward_returns_text_hidden_states_in_the_batch_order_and_width():
    """The fusion encoder reads the text tower's hidden states: length groups give them back in place, as wide as
    the batch, the real tokens' states those of each text alone."""
    input_ids, mask = _mixed_length_batch(n_short=60, n_long=60)
    model = make_model(text="bert", num_fusion_layers=1).eval()
    pixel_values = torch.randn(input_ids.shape[0], 3, IMAGE_SIZE, IMAGE_SIZE)
    with torch.no_grad():
        output = model(input_ids=input_ids, attention_mask=mask, pixel_values=pixel_values, return_loss=True)
        hidden = output.text_model_output.last_hidden_state
        assert hidden.shape[:2] == input_ids.shape and torch.isfinite(output.loss)
        for row in (0, 1, 57, 119):
            length = int(mask[row].sum())
            alone = model.text_model(input_ids=input_ids[row : row + 1, :length],
                                     attention_mask=mask[row : row + 1, :length]).last_hidden_state[0]
            torch.testing.assert_close(hidden[row, :length], alone, rtol=1e-5, atol=1e-5)


def test_length_groups_partition_the_rows_and_keep_left_padded_or_even_batches_whole():
    from modeling_ccr.modeling_ccr import text_length_groups

    _, mask = _mixed_length_batch()
    groups = text_length_groups(mask)
    assert sorted(torch.cat([rows for rows, _ in groups]).tolist()) == list(range(mask.shape[0]))
    longest = [length for _, length in groups]
    assert longest == [int(mask[rows].sum(1).max()) for rows, _ in groups]  # each group's own longest text
    assert longest == sorted(longest) and longest[0] <= 8
    assert text_length_groups(mask.flip(1)) is None  # left padding: cutting columns would cut tokens
    assert text_length_groups(torch.ones(300, 30, dtype=torch.long)) is None
    assert text_length_groups(mask[:3]) is None  # a few texts: one tower call costs less than the padding


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_a_traced_text_encoder_does_not_keep_the_length_groups_of_its_example_batch():
    """torch.jit.trace records one path: the length groups (chosen from the mask's values) are off while tracing,
    so the traced encoder is right for batches whose lengths differ from the example's."""
    class TextEncoder(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            return self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask)

    encode = TextEncoder(make_model(text="bert")).eval()
    example, other = _mixed_length_batch(seed=0), _mixed_length_batch(n_short=150, n_long=30, seed=1)
    with torch.no_grad():
        traced = torch.jit.trace(encode, example, check_trace=False, strict=False)
        torch.testing.assert_close(traced(*other), encode(*other), rtol=1e-5, atol=1e-5)
