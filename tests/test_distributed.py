"""Two CPU processes (gloo) on two halves of a batch, each computing CCRTrainer's training loss (one all-gather),
optimise the same loss as the model's own forward on the whole batch in one process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_model

from modeling_ccr.collator import CCRCollator

WORKER = Path(__file__).resolve().with_name("_distributed_worker.py")


def _run_two_ranks(tmp_path: Path, model, batch: dict, accumulation_steps: int = 1) -> dict:
    torch.save({"config": model.config.to_dict(), "state_dict": model.state_dict()}, tmp_path / "model.pt")
    torch.save(batch, tmp_path / "batch.pt")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(WORKER), str(tmp_path), str(accumulation_steps)]
    completed = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert completed.returncode == 0, completed.stderr[-4000:]
    return torch.load(tmp_path / "result.pt")


def _single_process(model, batch: dict) -> tuple[dict, dict]:
    model.zero_grad()
    torch.manual_seed(1234)
    outputs = model(**{k: v for k, v in batch.items() if k != "text_language_ids"}, return_loss=True)
    outputs.loss.backward()
    grads = {name: p.grad.clone() if p.grad is not None else torch.zeros_like(p) for name, p in model.named_parameters()}
    return outputs, grads


def test_gathered_one_to_k_loss_and_gradients_equal_one_big_batch(tmp_path, tiny_data):
    dataset, processor = tiny_data
    model = tiny_model(processor, seed=0)
    model.train()
    torch.manual_seed(0)
    batch = CCRCollator(processor, ["de", "en", "fr"])([dataset[i] for i in range(8)])
    result = _run_two_ranks(tmp_path, model, batch)
    outputs, grads = _single_process(model, batch)
    for rank_losses in result["losses"]:
        assert rank_losses["loss"] == pytest.approx(outputs.loss.item(), abs=1e-5)
    for name, grad in grads.items():
        torch.testing.assert_close(result["grads"][name], grad, atol=1e-5, rtol=1e-5, msg=name)


def test_gathered_itc_plus_cmlm_equal_one_big_batch(tmp_path, tiny_data):
    """With fusion layers: ITC is global; CMLM is a per-process mean that equals the global one when each process
    masks as many tokens (here one caption per image, so the positive is fixed, and one masked token per caption).
    MITM samples its negatives inside each process (as ALBEF / X-VLM do), so it is left out (weight 0)."""
    dataset, processor = tiny_data
    model = tiny_model(processor, num_fusion_layers=1, seed=0, itm_weight=0.0)
    model.train()
    rows = [dict(dataset[i]) for i in range(8)]
    for row in rows:
        row["captions"] = [next(c for c in row["captions"] if c["language"] == "en")]
    batch = CCRCollator(processor, ["de", "en", "fr"])(rows)
    batch["mlm_input_ids"] = batch["input_ids"].clone()
    batch["mlm_input_ids"][:, 1] = processor.tokenizer.mask_token_id
    batch["mlm_labels"] = torch.full_like(batch["input_ids"], -100)
    batch["mlm_labels"][:, 1] = batch["input_ids"][:, 1]
    result = _run_two_ranks(tmp_path, model, batch)
    outputs, grads = _single_process(model, batch)
    assert outputs.loss_mlm is not None and outputs.loss_itm is None
    mean_rank_loss = sum(r["loss"] for r in result["losses"]) / 2
    itc = [r["loss_itc"] for r in result["losses"]]
    assert itc[0] == pytest.approx(outputs.loss_itc.item(), abs=1e-5) and itc[1] == pytest.approx(itc[0], abs=1e-6)
    assert mean_rank_loss == pytest.approx(outputs.loss.item(), abs=1e-5)
    for name, grad in grads.items():
        torch.testing.assert_close(result["grads"][name], grad, atol=1e-5, rtol=1e-5, msg=name)


def test_accumulated_negatives_on_two_processes_equal_one_big_batch(tmp_path, tiny_data):
    """Each process cuts its half into 2 micro-batches (GradCache); the 4 micro-batches of the 2 processes are
    contrasted at once: loss and averaged gradients are those of the whole batch in one process."""
    dataset, processor = tiny_data
    model = tiny_model(processor, seed=0)
    model.train()
    batch = CCRCollator(processor, ["de", "en", "fr"])([dataset[i] for i in range(8)])
    assert len(set(torch.bincount(batch["text_image_ids"]).tolist())) > 1  # images have different numbers of texts
    result = _run_two_ranks(tmp_path, model, batch, accumulation_steps=2)
    outputs, grads = _single_process(model, batch)
    for rank_losses in result["losses"]:
        assert rank_losses["loss"] == pytest.approx(outputs.loss.item(), abs=1e-5)
    for name, grad in grads.items():
        torch.testing.assert_close(result["grads"][name], grad, atol=1e-5, rtol=1e-5, msg=name)
