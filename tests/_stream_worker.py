"""One rank of the 2-process stream training test (run by torchrun): trains CCRTrainer on tar shards.

usage: torchrun --standalone --nproc_per_node 2 tests/_stream_worker.py SHARDS OUTPUT_DIR IDS_OUT [stop_at|resume]
Each rank writes the image ids of its batches to IDS_OUT-rank<r>.json; rank 0 writes OUTPUT_DIR/final.safetensors.
"""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from conftest import tiny_model, tiny_processor  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import TrainerCallback, set_seed  # noqa: E402

from modeling_ccr.collator import CCRCollator  # noqa: E402
from modeling_ccr.streaming import CCRStream, TarShards  # noqa: E402
from modeling_ccr.trainer import CCRTrainer, CCRTrainingArguments  # noqa: E402

LANGUAGES = ["de", "en", "fr"]


class Stop(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True


def main() -> None:
    shards, output_dir, ids_out, mode = sys.argv[1], sys.argv[2], sys.argv[3], (sys.argv[4:] or [""])[0]
    torch.set_num_threads(1)
    set_seed(0)
    processor = tiny_processor()
    model = tiny_model(processor, seed=0)
    stream = CCRStream(TarShards.from_spec(shards), languages=LANGUAGES, seed=5, buffer_size=3)
    args = CCRTrainingArguments(
        output_dir=output_dir, max_steps=6, per_device_train_batch_size=2, learning_rate=1e-3,
        save_strategy="steps", save_steps=2, report_to="none", seed=0, disable_tqdm=True, use_cpu=True,
    )
    collator = CCRCollator(processor, LANGUAGES)
    seen = []

    def collate(rows):
        seen.append([row["image_id"] for row in rows])
        return collator(rows)

    callbacks = [Stop(int(mode))] if mode.isdigit() else []
    trainer = CCRTrainer(model=model, args=args, train_dataset=stream, processing_class=processor,
                         languages=LANGUAGES, data_collator=collate, callbacks=callbacks)
    trainer.train(resume_from_checkpoint=True if mode == "resume" else None)
    rank = int(os.environ.get("RANK", "0"))
    Path(f"{ids_out}-rank{rank}.json").write_text(json.dumps(seen))
    if rank == 0:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(Path(output_dir) / "final.safetensors"))
    # every rank waits for rank 0, then leaves the group together (a rank exiting alone aborts its gloo peer)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    # Leave without tearing objects down: freeing the DDP reducer, which still holds the gloo group, at interpreter
    # exit can deadlock with gloo's threads waiting for the GIL (a rank seen hanging in ~ProcessGroupGloo).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
