"""Trains the tiny model for the resume test; run as a subprocess so the test can SIGKILL it.

usage: python tests/_train_worker.py OUTPUT_DIR WEIGHTS_OUT [resume]
Env SLOW_STEPS=seconds sleeps after each step so the test has time to kill it after a checkpoint;
BF16=1 trains in bf16 mixed precision with image augmentation (their draws must replay on resume too).
"""

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from conftest import tiny_ccr_dataset, tiny_model, tiny_processor  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import TrainerCallback, set_seed  # noqa: E402

from modeling_ccr.trainer import CCRTrainer, CCRTrainingArguments  # noqa: E402


class Slow(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        time.sleep(float(os.environ.get("SLOW_STEPS", "0")))


def main() -> None:
    output_dir, weights_out = sys.argv[1], sys.argv[2]
    resume = len(sys.argv) > 3 and sys.argv[3] == "resume"
    torch.set_num_threads(1)
    set_seed(0)
    dataset = tiny_ccr_dataset()
    processor = tiny_processor(dataset)
    model = tiny_model(processor, num_fusion_layers=1, seed=0)
    args = CCRTrainingArguments(
        output_dir=output_dir, max_steps=8, per_device_train_batch_size=4, learning_rate=1e-3,
        save_strategy="steps", save_steps=2, logging_steps=1, report_to="none", seed=0,
        disable_tqdm=True, use_cpu=True, dataloader_num_workers=0, mlm_probability=0.3,
        bf16=os.environ.get("BF16") == "1", image_augmentation=os.environ.get("BF16") == "1",
    )
    trainer = CCRTrainer(model=model, args=args, train_dataset=dataset, processing_class=processor, callbacks=[Slow()])
    trainer.train(resume_from_checkpoint=True if resume else None)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, weights_out)


if __name__ == "__main__":
    main()
