"""Hub Space entry point: the standard evaluate metric widget (needs gradio, which Spaces provide)."""

import evaluate
from evaluate.utils import launch_gradio_widget

module = evaluate.load("mrv.py")
launch_gradio_widget(module)
