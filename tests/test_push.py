"""Publishing: hub_scripts/push.py against a local server that speaks the Hub's HTTP API."""

from __future__ import annotations

import importlib.util
import json
import re
import socket

import numpy as np
import pytest
from _hub_server import FakeHub
from _push_helpers import (
    REPO_ROOT,
    TOKEN,
    USER,
    eval_results,
    run_fresh,
    run_push_cli,
    write_plain_model_folder,
    write_test_metric_folder,
)
from huggingface_hub import ModelCard, snapshot_download

from modeling_ccr.cli import run_cli
from modeling_ccr.publishing import (
    IncompleteFolderError,
    InvalidRepoIdError,
    UnsafeSymlinkError,
    check_model_folder,
    push_model,
    render_model_card,
    validate_repo_id,
)


def _load_cli():
    spec = importlib.util.spec_from_file_location("push_cli", REPO_ROOT / "hub_scripts" / "push.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


push_cli = _load_cli()


@pytest.fixture
def hub():
    with FakeHub(tokens={TOKEN: USER}) as server:
        yield server
        assert server.unhandled == [], f"client used endpoints the fake Hub lacks: {server.unhandled}"


@pytest.fixture
def user_env(hub, tmp_path, monkeypatch):
    """The CLI's environment in this process: endpoint, token, and an empty HF_HOME."""
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    return hub


@pytest.fixture
def plain_folder(tmp_path):
    return write_plain_model_folder(tmp_path / "model")


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    code = run_cli(push_cli.main, list(args))
    out, err = capsys.readouterr()
    return code, out, err


def _commit_hash(out: str) -> str:
    match = re.search(r"^commit hash: ([0-9a-f]{40})$", out, re.M)
    assert match, out
    return match.group(1)


# -- local checks --------------------------------------------------------------------------------------

def test_check_model_folder_lists_every_missing_piece(plain_folder):
    assert check_model_folder(plain_folder) == []
    (plain_folder / "model.safetensors").unlink()
    (plain_folder / "configuration_ccr.py").unlink()  # named by auto_map and imported by modeling_ccr.py
    (plain_folder / "tokenizer.json").unlink()
    (plain_folder / "eval_results.json").unlink()
    cfg = json.loads((plain_folder / "processor_config.json").read_text())
    del cfg["auto_map"], cfg["image_processor"]
    (plain_folder / "processor_config.json").write_text(json.dumps(cfg))
    missing = check_model_folder(plain_folder)
    text = "\n".join(missing)
    assert len(missing) == 6, missing
    for expected in ("model.safetensors", "configuration_ccr.py", "tokenizer.json", "eval_results.json",
                     "processor_config.json: no auto_map entry for AutoProcessor", "image processor settings"):
        assert expected in text


def test_check_model_folder_follows_relative_imports_of_remote_code(plain_folder):
    (plain_folder / "modeling_ccr.py").write_text("from .fusion_layers import Fusion\n")
    assert any("fusion_layers.py" in m for m in check_model_folder(plain_folder))


@pytest.mark.parametrize("bad", ["name-only", "a/b/c", "ns/", "/name", "ns/na me", "ns/a--b", "ns/x.git", "ns/-x"])
def test_repo_id_must_be_namespace_slash_name(bad):
    with pytest.raises(InvalidRepoIdError, match="NAMESPACE/NAME"):
        validate_repo_id(bad)
    assert validate_repo_id("my-user/ccr_1tok.v2") == "my-user/ccr_1tok.v2"


def test_model_card_has_model_index_with_recall_per_language_and_mrv(plain_folder):
    card = render_model_card(plain_folder, repo_id="ns/tiny-ccr")
    reparsed = ModelCard(str(card))  # what the Hub parses
    results = reparsed.data.eval_results
    by_type = {(r.metric_type, r.dataset_config): r.metric_value for r in results}
    expected = eval_results()
    for lang in expected["languages"]:
        for direction in ("TR", "IR"):
            for k in ("1", "5", "10"):
                assert by_type[(f"{direction.lower()}_recall@{k}", lang)] == expected["recall"][direction][lang][f"R@{k}"]
    assert by_type[("mrv_tr", None)] == 1.25 and by_type[("mrv_ir", None)] == 2.5
    assert reparsed.data.language == ["en", "de", "zh"]
    text = card.text
    assert '"ns/tiny-ccr"' in text and "trust_remote_code=True" in text and "revision=revision" in text
    assert "| de | 11.00 | 41.00 | 61.00 | 11.00 | 41.00 | 61.00 |" in text
    assert "2406.18254" in text and "{{" not in str(card)


def test_model_card_name_and_report_image(plain_folder):
    assert "![" not in render_model_card(plain_folder).text
    (plain_folder / "report.png").write_bytes(b"\x89PNG")
    card = render_model_card(plain_folder, model_name="ccr-emoji")
    assert card.data.model_name == "ccr-emoji" and card.text.startswith("\n# ccr-emoji")
    assert "](report.png)" in card.text


def test_render_model_card_needs_eval_results(plain_folder):
    (plain_folder / "eval_results.json").write_text(json.dumps({"languages": ["en"], "recall": {}}))
    with pytest.raises(ValueError, match="recall.TR"):
        render_model_card(plain_folder)


# -- dry run -------------------------------------------------------------------------------------------

def test_dry_run_lists_files_and_card_and_contacts_nothing(user_env, plain_folder, capsys):
    code, out, err = _cli(capsys, str(plain_folder), "--repo-id", "ns/tiny", "--dry-run")
    assert code == 0, err
    listed = re.findall(r"^  (\S+)\s+\d", out, re.M)
    assert sorted(listed) == sorted(["README.md", "config.json", "model.safetensors", "configuration_ccr.py",
                                     "modeling_ccr.py", "processing_ccr.py", "tokenizer.json",
                                     "tokenizer_config.json", "processor_config.json", "eval_results.json"])
    assert "training_args.bin (pickle file" in out and "checkpoint-10/ (intermediate checkpoint, 1 file)" in out
    assert "----- README.md (rendered) -----" in out and "model-index:" in out
    assert user_env.requests == []  # not a single request reached the server
    assert TOKEN not in out + err


def test_dry_run_needs_no_token(user_env, plain_folder, capsys, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    code, out, _ = _cli(capsys, str(plain_folder), "--repo-id", "ns/tiny", "--dry-run")
    assert code == 0 and "dry run: nothing was sent" in out


# -- publishing and its failure paths ------------------------------------------------------------------

def test_push_commits_the_folder_once_and_files_come_back(user_env, plain_folder, capsys, tmp_path):
    code, out, err = _cli(capsys, str(plain_folder), "--repo-id", "ns/tiny", "--commit-message", "first")
    assert code == 0, err
    oid = _commit_hash(out)
    assert f"commit URL: {user_env.url}/ns/tiny/commit/{oid}" in out
    assert TOKEN not in out + err
    commits = [r for r in user_env.requests if r[0] == "POST" and "/commit/" in r[1]]
    assert len(commits) == 1  # the whole folder in one commit
    local = snapshot_download("ns/tiny", revision=oid, endpoint=user_env.url, token=TOKEN,
                              cache_dir=tmp_path / "cache")
    for name in ("config.json", "model.safetensors", "modeling_ccr.py", "eval_results.json"):
        assert (plain_folder / name).read_bytes() == (tmp_path / "cache" / local / name).read_bytes()
    assert "model-index:" in (tmp_path / "cache" / local / "README.md").read_text()
    remote = user_env.files("ns/tiny", revision=oid)
    assert "training_args.bin" not in remote and not any(p.startswith("checkpoint-") for p in remote)


def test_push_to_a_branch_leaves_main_untouched(user_env, plain_folder, capsys):
    assert _cli(capsys, str(plain_folder), "--repo-id", "ns/tiny")[0] == 0
    main_before = user_env.repo("ns/tiny").refs["main"]
    (plain_folder / "eval_results.json").write_text(json.dumps({**eval_results(), "mrv": {"TR": 9.0, "IR": 9.0}}))
    code, out, err = _cli(capsys, str(plain_folder), "--repo-id", "ns/tiny", "--revision", "exp-1")
    assert code == 0, err
    repo = user_env.repo("ns/tiny")
    assert repo.refs["main"] == main_before and repo.refs["exp-1"] == _commit_hash(out)
    assert b"mrv_tr" in user_env.files("ns/tiny", revision="exp-1")["README.md"]


def test_private_repo_is_not_readable_without_the_token(user_env, plain_folder, capsys, tmp_path):
    code, out, _ = _cli(capsys, str(plain_folder), "--repo-id", "ns/secret", "--private")
    assert code == 0 and user_env.repo("ns/secret").private
    from huggingface_hub.errors import RepositoryNotFoundError

    with pytest.raises(RepositoryNotFoundError):
        snapshot_download("ns/secret", endpoint=user_env.url, token=False, cache_dir=tmp_path / "c2")


def test_wrong_token_fails_cleanly_then_rerun_succeeds(user_env, plain_folder, capsys, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_wrong_token_abcdef")
    code, out, err = _cli(capsys, str(plain_folder), "--repo-id", "ns/tiny")
    assert code == 1 and out == ""
    assert err.startswith("push.py: error: authentication failed (HTTP 401)") and "HF_TOKEN" in err
    assert len(err.strip().splitlines()) == 1 and "hf_wrong_token_abcdef" not in err
    assert user_env.repo("ns/tiny") is None  # nothing published
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    code, out, err = _cli(capsys, str(plain_folder), "--repo-id", "ns/tiny")
    assert code == 0, err
    assert user_env.repo("ns/tiny") is not None


def test_missing_token_fails_before_any_request(user_env, plain_folder, capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setattr("huggingface_hub.constants.HF_TOKEN_PATH", str(tmp_path / "no-token"))
    code, _, err = _cli(capsys, str(plain_folder), "--repo-id", "ns/tiny")
    assert code == 1 and "no Hugging Face token found" in err and "HF_TOKEN" in err
    assert user_env.requests == []


def test_unreachable_endpoint_fails_cleanly(plain_folder, capsys, monkeypatch):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    code, out, err = _cli(capsys, str(plain_folder), "--repo-id", "ns/tiny")
    assert code == 1 and out == ""
    assert err.startswith(f"push.py: error: cannot reach {endpoint}") and len(err.strip().splitlines()) == 1


def test_incomplete_folder_is_refused_with_the_list_and_nothing_sent(user_env, plain_folder, capsys):
    (plain_folder / "model.safetensors").unlink()
    (plain_folder / "tokenizer_config.json").unlink()
    code, out, err = _cli(capsys, str(plain_folder), "--repo-id", "ns/tiny")
    assert code == 2 and "is incomplete" in err
    assert "  - model.safetensors" in err and "  - tokenizer_config.json" in err
    assert user_env.requests == []
    with pytest.raises(IncompleteFolderError) as info:
        push_model(plain_folder, "ns/tiny", endpoint=user_env.url)
    assert len(info.value.missing) == 2


def test_bad_repo_id_is_refused_before_any_request(user_env, plain_folder, capsys):
    code, _, err = _cli(capsys, str(plain_folder), "--repo-id", "tiny-without-namespace")
    assert code == 2 and "invalid repo id 'tiny-without-namespace'" in err and "NAMESPACE/NAME" in err
    assert user_env.requests == []


def test_failed_commit_leaves_no_partial_model_and_rerun_succeeds(user_env, plain_folder, capsys):
    user_env.fail_next("POST", r"/commit/", 500)  # the server breaks while the commit is sent
    code, _, err = _cli(capsys, str(plain_folder), "--repo-id", "ns/tiny")
    assert code == 1 and "HTTP 500" in err
    repo = user_env.repo("ns/tiny")
    assert repo is not None and set(user_env.files("ns/tiny")) == {".gitattributes"}  # created, still empty
    code, out, err = _cli(capsys, str(plain_folder), "--repo-id", "ns/tiny")
    assert code == 0, err
    assert "model.safetensors" in user_env.files("ns/tiny", revision=_commit_hash(out))


def test_pushing_the_same_folder_twice_is_a_no_op(user_env, plain_folder, capsys):
    first = _commit_hash(_cli(capsys, str(plain_folder), "--repo-id", "ns/tiny")[1])
    second = _commit_hash(_cli(capsys, str(plain_folder), "--repo-id", "ns/tiny")[1])
    assert first == second


# -- the metric ----------------------------------------------------------------------------------------

def test_metric_dry_run_uploads_symlink_contents_and_adds_app(user_env, tmp_path, capsys):
    folder = write_test_metric_folder(tmp_path / "metrics")
    code, out, err = _cli(capsys, "--metric", str(folder), "--repo-id", "ns/mrv", "--dry-run")
    assert code == 0, err
    assert "ranks_core.py" in out and "contents of the symlink target" in out
    assert "app.py" in out and "generated Gradio widget" in out
    assert "sdk: gradio" in out and user_env.requests == []


def test_metric_space_name_must_match_the_script(user_env, tmp_path, capsys):
    folder = write_test_metric_folder(tmp_path / "metrics")
    code, _, err = _cli(capsys, "--metric", str(folder), "--repo-id", "ns/other-name")
    assert code == 2 and "use ns/mrv" in err and user_env.requests == []


def test_metric_published_as_space_computes_with_evaluate_load_in_a_fresh_process(hub, tmp_path):
    """The package's own evaluate_metrics/mrv, whose mrv_core.py is a symlink into modeling_ccr/."""
    from modeling_ccr.mrv_core import compute_mrv

    folder = REPO_ROOT / "evaluate_metrics" / "mrv"
    assert (folder / "mrv_core.py").is_symlink()
    pushed = run_push_cli(["--metric", str(folder), "--repo-id", "ns/mrv"], hub.url, tmp_path / "pusher")
    assert pushed.returncode == 0, pushed.stderr
    assert TOKEN not in pushed.stdout + pushed.stderr
    oid = _commit_hash(pushed.stdout)
    space = hub.repo("ns/mrv", repo_type="space")
    assert space is not None and space.sdk == "gradio"
    files = hub.files("ns/mrv", revision=oid, repo_type="space")
    assert files["mrv_core.py"] == (REPO_ROOT / "modeling_ccr" / "mrv_core.py").read_bytes()  # content, not a link
    assert b"sdk: gradio" in files["README.md"] and "app.py" in files
    ranks = [[1, 1, 1], [1, 3, None], [4, 2, 6], [2, None, None]]
    loaded = run_fresh(f"""
        import json, evaluate
        latest = evaluate.load("ns/mrv")
        pinned = evaluate.load("ns/mrv", revision="{oid}")
        ranks = {ranks!r}
        assert latest.compute(ranks=ranks) == pinned.compute(ranks=ranks)
        print(json.dumps([pinned.compute(ranks=ranks), pinned.compute(ranks=ranks, variant="std")]))
    """, hub.url, tmp_path / "user")
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    variance, std = json.loads(loaded.stdout.strip().splitlines()[-1])
    assert variance["mrv"] == pytest.approx((0 + 1 + 8 / 3) / 3)
    for got, variant in ((variance, "variance"), (std, "std")):
        want = compute_mrv(ranks, variant=variant)
        assert got["mrv"] == pytest.approx(want["mrv"]) and got["excluded_indices"] == list(want["excluded_indices"])
        assert (got["variant"], got["num_instances"]) == (variant, want["num_instances"])


def test_own_metric_module_with_external_symlink_loads_from_the_space(hub, tmp_path):
    """Any evaluate module folder works, not only ours: here app.py is generated and the helper is a symlink."""
    folder = write_test_metric_folder(tmp_path / "metrics")
    pushed = run_push_cli(["--metric", str(folder), "--repo-id", "ns/mrv"], hub.url, tmp_path / "pusher")
    assert pushed.returncode == 0, pushed.stderr
    files = hub.files("ns/mrv", revision=_commit_hash(pushed.stdout), repo_type="space")
    assert files["ranks_core.py"] == (tmp_path / "metrics" / "shared_core.py").read_bytes()
    assert b'evaluate.load("ns/mrv")' in files["app.py"]
    loaded = run_fresh("""
        import evaluate
        print(evaluate.load("ns/mrv").compute(ranks=[[1, 1, 1], [1, 3, 2], [4, 2, 6]])["mrv"])
    """, hub.url, tmp_path / "user")
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert float(loaded.stdout.strip().splitlines()[-1]) == pytest.approx((0 + 2 / 3 + 8 / 3) / 3)


# -- end to end: a real model through the Hub ----------------------------------------------------------

FRESH_LOAD = """
import json, torch
from transformers import AutoModel, AutoProcessor
REPO, REVISION, QUERIES = {repo!r}, {revision!r}, {queries!r}
{image_code}
model = AutoModel.from_pretrained(REPO, trust_remote_code=True, revision=REVISION).eval()
processor = AutoProcessor.from_pretrained(REPO, trust_remote_code=True, revision=REVISION)
with torch.no_grad():
    img = model.get_image_features(processor(images=images)["pixel_values"])
    batch = processor(text=QUERIES)
    txt = model.get_text_features(batch["input_ids"], batch["attention_mask"])
print(json.dumps({{"classes": [type(model).__name__, type(processor).__name__, type(model).__module__],
                  "image": img.tolist(), "text": txt.tolist()}}))
"""


def test_model_pushed_by_the_cli_loads_in_a_fresh_process_with_the_same_embeddings(hub, tmp_path):
    from _push_helpers import IMAGE_CODE, QUERIES, embed, write_real_model_folder

    folder = tmp_path / "ccr-tiny"
    model, processor = write_real_model_folder(folder)
    expected = embed(model, processor)
    assert check_model_folder(folder) == []

    pushed = run_push_cli([str(folder), "--repo-id", "ns/ccr-tiny"], hub.url, tmp_path / "pusher")
    assert pushed.returncode == 0, pushed.stderr
    assert TOKEN not in pushed.stdout + pushed.stderr
    oid = _commit_hash(pushed.stdout)
    # A later push to main must not change what the pinned revision loads.
    (folder / "eval_results.json").write_text(json.dumps({**eval_results(), "mean_recall": 1.0}))
    again = run_push_cli([str(folder), "--repo-id", "ns/ccr-tiny"], hub.url, tmp_path / "pusher")
    assert again.returncode == 0 and _commit_hash(again.stdout) != oid

    code = FRESH_LOAD.format(repo="ns/ccr-tiny", revision=oid, queries=QUERIES, image_code=IMAGE_CODE)
    loaded = run_fresh(code, hub.url, tmp_path / "user")
    assert loaded.returncode == 0, loaded.stderr[-4000:]
    got = json.loads(loaded.stdout.strip().splitlines()[-1])
    assert got["classes"][:2] == ["CCRModel", "CCRProcessor"]
    assert got["classes"][2].startswith("transformers_modules.")  # the repository's code, not this package
    for key in ("image", "text"):
        np.testing.assert_allclose(np.array(got[key]), np.array(expected[key]), rtol=1e-4, atol=1e-7)
        assert np.abs(np.array(expected[key])).max() > 1e-4  # not trivially zero
    resolved = [r for r in hub.requests if "/resolve/" in r[1]]
    assert resolved and all(f"/resolve/{oid}/" in r[1] for r in resolved)  # every file from the pinned commit


def test_a_symlink_leaving_the_model_folder_is_refused_before_any_request(user_env, plain_folder, tmp_path):
    secret = tmp_path / "token"
    secret.write_text("hf_secret")
    (plain_folder / "notes.txt").symlink_to(secret)
    with pytest.raises(UnsafeSymlinkError, match=r"1 symlink\(s\) leaving the folder") as info:
        push_model(plain_folder, "ns/tiny", endpoint=user_env.url, dry_run=True)
    assert f"notes.txt -> {secret}" in str(info.value) and user_env.requests == []
    (plain_folder / "notes.txt").unlink()
    (plain_folder / "vocab-link.json").symlink_to(plain_folder / "tokenizer.json")  # inside: uploaded
    result = push_model(plain_folder, "ns/tiny", endpoint=user_env.url, dry_run=True)
    assert "vocab-link.json" in [f.path_in_repo for f in result.files]


@pytest.mark.parametrize(("damage", "problem"), [
    ("empty", "model.safetensors: empty (0 bytes)"),
    ("truncated", "model.safetensors: not a readable safetensors file (truncated or corrupted"),
    ("other_shape", "tensor(s) with another shape than config.json gives (text_projection.weight"),
    ("missing_key", "tensor(s) missing from the weights (tau)"),
])
def test_weights_that_do_not_open_or_match_the_config_are_refused(plain_folder, damage, problem):
    import torch
    from safetensors.torch import load_file, save_file

    path = plain_folder / "model.safetensors"
    if damage == "empty":
        path.write_bytes(b"")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:-64])
    else:
        weights = load_file(path)
        if damage == "other_shape":
            weights["text_projection.weight"] = torch.zeros(3, 3)
        else:
            del weights["tau"]
        save_file(weights, str(path), metadata={"format": "pt"})
    problems = check_model_folder(plain_folder)
    assert any(problem in p for p in problems), problems


def test_a_staging_folder_left_by_a_killed_write_is_not_a_model(plain_folder, tmp_path):
    staging = tmp_path / ".model-k1ll3d"
    plain_folder.rename(staging)
    assert check_model_folder(staging) == [f"{staging} is a temporary folder a stopped train.py left while writing "
                                           "the model (not a finished model; the next run removes it)"]
