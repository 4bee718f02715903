"""One rank of the 2-process gather test (run by torchrun): the training loss (CCRTrainer's, `ccr_training_loss`)
and averaged gradients on half a batch.

usage: torchrun --standalone --nproc_per_node 2 tests/_distributed_worker.py WORK_DIR [ACCUMULATION_STEPS]
With ACCUMULATION_STEPS N > 1 each rank back-propagates its half in N micro-batches
(``accumulated_contrastive_step``) instead of ``ccr_training_loss``.
WORK_DIR holds model.pt (state dict + config kwargs) and batch.pt written by the test; rank 0 writes result.pt.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from modeling_ccr import CCRConfig, CCRModel  # noqa: E402
from modeling_ccr.contrastive_accumulation import accumulated_contrastive_step  # noqa: E402
from modeling_ccr.trainer import ccr_training_loss  # noqa: E402


def local_half(batch: dict, rank: int, world: int) -> dict:
    """This rank's images and the texts that describe them, with image ids made local."""
    images = batch["pixel_values"].shape[0]
    per_rank = images // world
    first, last = rank * per_rank, (rank + 1) * per_rank
    texts = (batch["text_image_ids"] >= first) & (batch["text_image_ids"] < last)
    half = {"pixel_values": batch["pixel_values"][first:last], "text_image_ids": batch["text_image_ids"][texts] - first}
    for key in ("input_ids", "attention_mask", "text_language_ids", "mlm_input_ids", "mlm_labels"):
        if key in batch:
            half[key] = batch[key][texts]
    return half


def main() -> None:
    work = Path(sys.argv[1])
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    saved = torch.load(work / "model.pt")
    model = CCRModel(CCRConfig.from_dict(saved["config"]))
    model.load_state_dict(saved["state_dict"])
    model.train()
    batch = torch.load(work / "batch.pt")
    torch.manual_seed(1234)
    accumulation = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    if accumulation > 1:
        loss = accumulated_contrastive_step(model, local_half(batch, rank, world), accumulation)
        outputs = type("Outputs", (), {"loss": loss, "loss_itc": None, "loss_itm": None, "loss_mlm": None})
    else:
        outputs = ccr_training_loss(model, local_half(batch, rank, world))
        outputs.loss.backward()
    grads = {}
    for name, parameter in model.named_parameters():
        grad = parameter.grad if parameter.grad is not None else torch.zeros_like(parameter)
        dist.all_reduce(grad)  # what DDP does: average the ranks' gradients
        grads[name] = grad / world
    losses = {key: getattr(outputs, key) for key in ("loss", "loss_itc", "loss_itm", "loss_mlm")}
    gathered = [None] * world
    dist.all_gather_object(gathered, {k: None if v is None else float(v) for k, v in losses.items()})
    if rank == 0:
        torch.save({"grads": grads, "losses": gathered}, work / "result.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
