"""Hub Space of the MRV metric: paste ranks (one row per instance, one entry per language), read MRV.

Written for the Gradio version that the card (README.md) pins; evaluate's own ``launch_gradio_widget``
uses ``gr.inputs``, which Gradio removed in 4.0, so this app builds its page itself.
"""

import json
import math
import os
from pathlib import Path

import evaluate
import gradio as gr

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
HERE = Path(__file__).resolve().parent
module = evaluate.load(str(HERE / "mrv.py"))
EXAMPLE = "[[1, 1, 1], [1, 3, null], [2, null, null]]"


def _card() -> str:
    text = (HERE / "README.md").read_text(encoding="utf-8")
    return text.split("---", 2)[2] if text.startswith("---") else text


def compute(ranks: str, variant: str) -> dict:
    """MRV of ``ranks`` (JSON: a list of rows; null for a missing language)."""
    try:
        rows = json.loads(ranks)
    except json.JSONDecodeError as error:
        raise gr.Error(f"ranks must be JSON, e.g. {EXAMPLE} ({error})") from None
    try:
        result = module.compute(ranks=rows, variant=variant)
    except (ValueError, TypeError) as error:
        raise gr.Error(str(error)) from None
    return {key: None if isinstance(value, float) and math.isnan(value) else value for key, value in result.items()}


demo = gr.Interface(
    fn=compute,
    inputs=[
        gr.Textbox(label="ranks (JSON: one row per instance, one 1-based rank per language, null if missing)",
                   value=EXAMPLE, lines=4),
        gr.Radio(["variance", "std"], value="variance", label="variant"),
    ],
    outputs=gr.JSON(label="MRV"),
    title="Metric: MRV (Mean Rank Variance)",
    description=module.info.description,
    article=_card(),
    examples=[[EXAMPLE, "variance"], ["[[1, 5]]", "variance"], ["[[1, 1, 1], [1, 3, null]]", "std"]],
    api_name="compute",
    flagging_mode="never",
)

if __name__ == "__main__":
    demo.launch(ssr_mode=False)
