"""A tiny fake CCR model and processor (real torch modules with the contract's methods) and a dataset."""

import types

import numpy as np
import torch
from datasets import Dataset
from PIL import Image

from modeling_ccr.dataset_schema import CCR_FEATURES


class FakeProcessor:
    """Processor-like callable: images -> pixel_values (mean colour), texts -> padded character ids."""

    def __call__(self, images=None, text=None):
        if images is not None:
            arrays = [np.asarray(image, dtype=np.float32).mean(axis=(0, 1)) / 255.0 for image in images]
            return {"pixel_values": torch.tensor(np.stack(arrays))}
        width = max(len(t) for t in text)
        ids = torch.zeros(len(text), width, dtype=torch.long)
        mask = torch.zeros(len(text), width, dtype=torch.long)
        for row, t in enumerate(text):
            ids[row, : len(t)] = torch.tensor([ord(ch) % 97 for ch in t])
            mask[row, : len(t)] = 1
        return {"input_ids": ids, "attention_mask": mask}


class FakeModel(torch.nn.Module):
    """Tiny dual encoder with an ITM-like head; get_image_features returns an output object (CLIP 5.x)."""

    def __init__(self, fusion_layers=0):
        super().__init__()
        torch.manual_seed(0)
        self.config = types.SimpleNamespace(num_fusion_layers=fusion_layers)
        self.vision = torch.nn.Linear(3, 8)
        self.embed = torch.nn.Embedding(97, 8)
        self.itm = torch.nn.Linear(8, 8, bias=False)

    def get_image_features(self, pixel_values):
        return types.SimpleNamespace(pooler_output=self.vision(pixel_values), last_hidden_state=None)

    def get_text_features(self, input_ids, attention_mask=None):
        return self._masked(input_ids, torch.ones_like(input_ids) if attention_mask is None else attention_mask)

    def _masked(self, input_ids, attention_mask):
        emb = self.embed.weight[input_ids] * attention_mask[..., None]
        return emb.sum(1) / attention_mask.sum(1, keepdim=True)

    def get_image_tokens(self, pixel_values):
        base = self.vision(pixel_values)
        return torch.stack([base, 2 * base], dim=1)

    def itm_scores(self, image_tokens, input_ids, attention_mask):
        return (self.itm(image_tokens.mean(1)) * self._masked(input_ids, attention_mask)).sum(-1)


def _tiny_dataset(n=9):
    rng = np.random.default_rng(11)
    rows = {"image": [], "image_id": [], "captions": []}
    words = ["red", "blue", "cat", "dog", "sun", "tree", "car", "boat", "fish"]
    for i in range(n):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        rows["image"].append(Image.new("RGB", (4, 4), colour))
        rows["image_id"].append(f"img{i}")
        caps = [{"language": "en", "text": f"a {words[i]}"}, {"language": "de", "text": f"ein {words[i]}"}]
        if i % 3:
            caps.append({"language": "ja", "text": f"{words[i]} no e"})
        rows["captions"].append(caps)
    return Dataset.from_dict(rows, features=CCR_FEATURES)
