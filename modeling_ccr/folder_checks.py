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




class PublishError(Exception):
    """A publish that cannot go ahead; the message says why in one line (lists for missing files)."""


class InvalidRepoIdError(PublishError, ValueError):
    """The repo id is not `namespace/name`."""


class IncompleteFolderError(PublishError, ValueError):
    """The folder lacks files a Hub user needs; `missing` lists them."""

    def __init__(self, folder: Path, missing: list[str], what: str = "model folder"):
        self.missing = list(missing)
        super().__init__(f"{what} {folder} is incomplete; missing or invalid:\n" + "\n".join(f"  - {m}" for m in missing))


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
