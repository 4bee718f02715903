"""sentence-transformers glue of a saved CCR folder (remote code: imports only the standard library).

`SentenceTransformer(folder_or_repo, trust_remote_code=True)` reads `modules.json`: one sentence-transformers
`Transformer` module at the folder root that loads `CCRModel` / `CCRProcessor` through the Auto classes and
calls `get_text_features` for texts and `get_image_features` for images, then `Normalize`, so `.encode()` gives
the model's L2-normalised embeddings for texts in any language and for PIL images, and `similarity` is cosine,
as in the package's retrieval evaluation. No sentence-transformers import is needed to write these files.
"""

import json
import os

MODULES = [
    {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.base.modules.transformer.Transformer"},
    {"idx": 1, "name": "1", "path": "1_Normalize", "type": "sentence_transformers.base.modules.normalize.Normalize"},
]
TRANSFORMER_CONFIG = {
    "transformer_task": "feature-extraction",
    "modality_config": {
        "text": {"method": "get_text_features", "method_output_name": None},
        "image": {"method": "get_image_features", "method_output_name": None},
    },
    "module_output_name": "sentence_embedding",
}
NORMALIZE_CONFIG = {"module_input_name": "sentence_embedding", "module_output_name": "sentence_embedding"}
MODEL_CONFIG = {"model_type": "SentenceTransformer", "prompts": {}, "default_prompt_name": None, "similarity_fn_name": "cosine"}


def _write_json(path: str, data: object) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2)
        handle.write("\n")


def write_sentence_transformers_files(save_directory: str) -> None:
    """Write modules.json, sentence_bert_config.json, config_sentence_transformers.json and 1_Normalize/."""
    _write_json(os.path.join(save_directory, "modules.json"), MODULES)
    _write_json(os.path.join(save_directory, "sentence_bert_config.json"), TRANSFORMER_CONFIG)
    _write_json(os.path.join(save_directory, "config_sentence_transformers.json"), MODEL_CONFIG)
    normalize = os.path.join(save_directory, "1_Normalize")
    os.makedirs(normalize, exist_ok=True)
    _write_json(os.path.join(normalize, "config.json"), NORMALIZE_CONFIG)
