"""Local checks of a folder before it is published: a model folder (what `AutoModel.from_pretrained(repo,
trust_remote_code=True)` needs from the repository alone, and the metrics for the card), an `evaluate`
module folder, a repo id. Nothing here talks to the Hub; every problem is listed, one line each.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

from .results import validate_results_json

_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
_REPO_ID_RE = re.compile(rf"^{_NAME}/{_NAME}$")
# Pickles are never published (weights go up as safetensors only; Trainer's training_args.bin is one too).
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"}
_TOKENIZER_VOCABS = ("tokenizer.json", "vocab.txt", "vocab.json", "sentencepiece.bpe.model", "spiece.model",
                     "tokenizer.model")
# train.py writes the model into a hidden ``.model-*`` sibling first, then renames it: such a folder is what a kill
# during the final write left behind, never a finished model.
STAGING_PREFIX = ".model-"


class PublishError(Exception):
    """A publish that cannot go ahead; the message says why in one line (lists for missing files)."""


class InvalidRepoIdError(PublishError, ValueError):
    """The repo id is not `namespace/name`."""


class IncompleteFolderError(PublishError, ValueError):
    """The folder lacks files a Hub user needs; `missing` lists them."""

    def __init__(self, folder: Path, missing: list[str], what: str = "model folder"):
        self.missing = list(missing)
        if len(self.missing) == 1:  # one problem: named on the one line
            super().__init__(f"{what} {folder} is refused: {self.missing[0]}")
        else:
            super().__init__(f"{what} {folder} is incomplete; missing or invalid:\n"
                             + "\n".join(f"  - {m}" for m in missing))


def validate_repo_id(repo_id: str) -> str:
    """Return `repo_id` if it is `namespace/name` (letters, digits, `-`, `_`, `.`), else raise."""
    if (not isinstance(repo_id, str) or not _REPO_ID_RE.match(repo_id) or "--" in repo_id or ".." in repo_id
            or repo_id.endswith(".git")):
        raise InvalidRepoIdError(
            f"invalid repo id {repo_id!r}: expected NAMESPACE/NAME, e.g. my-user/ccr-1tok-emoji "
            "(letters, digits, '-', '_' and '.', no '--' or '..', at most 96 characters each)"
        )
    return repo_id


def _read_json(path: Path, problems: list[str]) -> dict | None:
    if not path.is_file():
        problems.append(path.name)
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        problems.append(f"{path.name}: not valid JSON ({err})")
        return None
    if not isinstance(data, dict):
        problems.append(f"{path.name}: expected a JSON object")
        return None
    return data


def _auto_map_modules(auto_map: dict) -> set[str]:
    """Module names named by an auto_map ("configuration_ccr.CCRConfig", ["a.Slow", "b.Fast"], "repo--m.C")."""
    modules = set()
    for value in auto_map.values():
        for ref in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(ref, str) and "." in ref:
                modules.add(ref.split("--")[-1].rsplit(".", 1)[0])
    return modules


def _relative_imports(path: Path) -> set[str]:
    """Modules a remote-code file imports relatively (`from .x import y`): they must be uploaded too."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return set()
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names)
    return found


def _check_remote_code(folder: Path, modules: set[str], problems: list[str]) -> None:
    seen: set[str] = set()
    todo = sorted(modules)
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        file = folder / f"{module.replace('.', '/')}.py"
        if not file.is_file():
            problems.append(f"{file.name} (remote code named by auto_map or imported by it)")
            continue
        todo.extend(sorted(_relative_imports(file) - seen))


def check_eval_results(data: dict) -> list[str]:
    """Problems with an eval_results.json payload for a model card: the layout of ``results`` and numeric
    MRV for both directions."""
    problems = validate_results_json(data)
    if problems and "'languages'" in problems[0]:
        return problems
    mrv = data.get("mrv")
    if not (isinstance(mrv, dict) and all(isinstance(mrv.get(d), (int, float)) for d in ("TR", "IR"))):
        problems.append("eval_results.json: 'mrv' must hold numbers for TR and IR")
    return problems


def check_model_folder(path: str | Path) -> list[str]:
    """List what a saved model folder lacks for a Hub repository that loads with trust_remote_code.

    Checked: config.json with an auto_map for AutoConfig and AutoModel; safetensors weights (all shards of
    an index); every remote-code file an auto_map names, and what those files import relatively; tokenizer
    config and vocabulary; processor_config.json with the AutoProcessor auto_map; eval_results.json for the
    model card. An empty list means the folder is complete.
    """
    folder = Path(path)
    if not folder.is_dir():
        return [f"{folder} (not a folder)"]
    if folder.resolve().name.startswith(STAGING_PREFIX):
        return [f"{folder} is a temporary folder a stopped train.py left while writing the model (not a finished "
                "model; the next run removes it)"]
    problems: list[str] = []
    modules: set[str] = set()

    config = _read_json(folder / "config.json", problems)
    if config is not None:
        auto_map = config.get("auto_map")
        if not isinstance(auto_map, dict):
            problems.append("config.json: no auto_map (register the classes with register_for_auto_class)")
        else:
            for key in ("AutoConfig", "AutoModel"):
                if key not in auto_map:
                    problems.append(f"config.json: auto_map has no {key} entry")
            modules |= _auto_map_modules(auto_map)

    index = folder / "model.safetensors.index.json"
    if index.is_file():
        data = _read_json(index, problems) or {}
        shards = sorted(set((data.get("weight_map") or {}).values()))
        if not shards:
            problems.append("model.safetensors.index.json: empty weight_map")
        problems += [f"{s} (weight shard listed in model.safetensors.index.json)" for s in shards
                     if not (folder / s).is_file()]
    elif not (folder / "model.safetensors").is_file():
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES and "model" in p.name)
        hint = f"; found {', '.join(pickles)}, but only safetensors are published" if pickles else ""
        problems.append(f"model.safetensors (safetensors weights){hint}")
    if config is not None and not problems:
        problems += check_model_weights(folder)

    tok_config = _read_json(folder / "tokenizer_config.json", problems)
    if tok_config is not None and isinstance(tok_config.get("auto_map"), dict):
        modules |= _auto_map_modules(tok_config["auto_map"])
    if not any((folder / name).is_file() for name in _TOKENIZER_VOCABS):
        problems.append("tokenizer.json (or another tokenizer vocabulary file)")

    proc_config = _read_json(folder / "processor_config.json", problems)
    if proc_config is not None:
        auto_map = proc_config.get("auto_map")
        if not (isinstance(auto_map, dict) and "AutoProcessor" in auto_map):
            problems.append("processor_config.json: no auto_map entry for AutoProcessor")
        else:
            modules |= _auto_map_modules(auto_map)
    pre_config = folder / "preprocessor_config.json"
    if pre_config.is_file():
        data = _read_json(pre_config, problems)
        if data is not None and isinstance(data.get("auto_map"), dict):
            modules |= _auto_map_modules(data["auto_map"])
    elif proc_config is not None and not isinstance(proc_config.get("image_processor"), dict):
        problems.append("image processor settings (an image_processor entry in processor_config.json "
                        "or a preprocessor_config.json)")

    _check_remote_code(folder, modules, problems)

    if not (folder / "eval_results.json").is_file():
        problems.append("eval_results.json (the metrics the model card is rendered from)")
    else:
        results = _read_json(folder / "eval_results.json", problems)
        if results is not None:
            problems += check_eval_results(results)
    return problems


def _weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        data = json.loads(index.read_text(encoding="utf-8"))
        return [folder / name for name in sorted(set(data["weight_map"].values()))]
    return [folder / "model.safetensors"]


def check_model_weights(path: str | Path) -> list[str]:
    """Problems with a model folder's safetensors weights, read without loading a tensor: a 0-byte, truncated or
    corrupted file, and tensors that do not match config.json (missing or unexpected keys, other shapes).

    The expected tensors come from the model built from config.json on the meta device (no memory allocated),
    loaded through ``from_pretrained`` so the key renamings transformers applies on load are honoured.
    """
    from safetensors import SafetensorError, safe_open

    folder = Path(path)
    problems = []
    for file in _weight_files(folder):
        if file.stat().st_size == 0:
            problems.append(f"{file.name}: empty (0 bytes)")
            continue
        try:
            with safe_open(str(file), framework="pt") as handle:
                list(handle.keys())
        except (SafetensorError, OSError, ValueError) as err:
            problems.append(f"{file.name}: not a readable safetensors file (truncated or corrupted: {err})")
    if problems:
        return problems
    return _compare_with_config(folder)


def _compare_with_config(folder: Path) -> list[str]:
    from transformers.utils import logging as hf_logging

    from .modeling_ccr import CCRModel

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # the load report is summarised below, not printed
    hf_logging.disable_progress_bar()
    try:
        _, info = CCRModel.from_pretrained(folder, device_map="meta", output_loading_info=True,
                                           ignore_mismatched_sizes=True)
    except Exception as err:  # noqa: BLE001 - any failure to build the model from the folder is the problem reported
        return [f"config.json and the weights do not make a CCR model: {str(err).splitlines()[0] if str(err) else err!r}"]
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    problems = []
    for kind, label in (("missing_keys", "missing from the weights"), ("unexpected_keys", "not in the model"),
                        ("mismatched_keys", "with another shape than config.json gives")):
        keys = sorted(str(key[0] if isinstance(key, tuple) else key) for key in info.get(kind) or ())
        if keys:
            shown = ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
            problems.append(f"model.safetensors does not match config.json: {len(keys)} tensor(s) {label} ({shown})")
    return problems


def check_metric_folder(path: str | Path, repo_id: str | None = None) -> list[str]:
    """List what an `evaluate` module folder lacks: `<name>.py` (name = the folder name, which the
    Space must share), the files it imports relatively (evaluate downloads them one by one),
    README.md (the metric card) and requirements.txt."""
    folder = Path(path)
    if not folder.is_dir():
        return [f"{folder} (not a folder)"]
    name = folder.resolve().name
    problems = []
    if repo_id is not None and repo_id.split("/")[-1] != name:
        problems.append(f"the Space name must match the metric script: use {repo_id.split('/')[0]}/{name} "
                        f"(evaluate.load(\"ns/X\") downloads X.py)")
    script = folder / f"{name}.py"
    if not script.is_file():
        problems.append(f"{name}.py (the metric script, named like its folder)")
    else:
        for module in sorted(_relative_imports(script)):
            if not (folder / f"{module}.py").is_file():
                problems.append(f"{module}.py (imported by {name}.py; a dangling symlink counts as missing)")
    for required in ("README.md", "requirements.txt"):
        if not (folder / required).is_file():
            problems.append(required)
    return problems
