"""The Gradio demo of image search: type a query in any language and see the images; drop in an image and see
its best captions in each language. Built on a ``GallerySearch`` (``modeling_ccr.search``); launched by
``hub_scripts/demo.py`` and by the ``app.py`` of an exported Space (``export_space``).

The page offers two API endpoints (for ``gradio_client``): ``/search_text`` (query, k) -> (image grid,
table of rank/id/score) and ``/image_captions`` (image, languages, per language) -> table of
language/rank/caption/id/score.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from .search import GallerySearch

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # nothing leaves the machine

TEXT_HEADERS = ["rank", "image_id", "score"]
CAPTION_HEADERS = ["language", "rank", "caption", "image_id", "score"]
EXAMPLES = ["roter Apfel", "pomme rouge", "红苹果", "red apple", "červené jablko", "赤いリンゴ"]


def build_demo(search: GallerySearch, title: str = "CCR-1toK multilingual image search") -> Any:
    """The Blocks app over ``search`` (not launched)."""
    import gradio as gr

    languages = search.languages
    model = str(search.info.get("model"))
    model = "/".join(Path(model).parts[-2:]) if Path(model).is_absolute() else model  # a local folder: its short name

    def search_text(query: str, k: float) -> tuple[list, list[list]]:
        if not query or not query.strip():
            raise gr.Error("Type a query (any language).")
        hits = search.search_text(query.strip(), int(k))
        grid = [(search.image(hit.id), f"{hit.id} · {hit.score:.3f}") for hit in hits]
        return grid, [[hit.rank, hit.id, round(hit.score, 4)] for hit in hits]

    def image_captions(image: Any, chosen: list[str], per_language: float) -> list[list]:
        if image is None:
            raise gr.Error("Upload an image.")
        if not languages:
            raise gr.Error("This index has no captions (its gallery had none).")
        if not chosen:
            raise gr.Error("Choose at least one caption language.")
        hits = search.search_captions(image, int(per_language), languages=chosen, per_language=True)
        order = {language: i for i, language in enumerate(chosen)}
        hits.sort(key=lambda hit: (order[hit.language], hit.rank))
        return [[hit.language, hit.rank, hit.text, hit.id, round(hit.score, 4)] for hit in hits]

    with gr.Blocks(title=title, analytics_enabled=False) as demo:
        gr.Markdown(f"# {title}\n{len(search)} images"
                    + (f", captions in {', '.join(languages)}" if languages else "")
                    + f". Index: {search.info['index']['images']['kind']}; model: `{model}`.")
        with gr.Tab("Text → images"):
            with gr.Row():
                query = gr.Textbox(label="Query (any language)", placeholder="roter Apfel", elem_id="query", scale=4)
                k = gr.Slider(1, min(48, len(search)), value=min(12, len(search)), step=1, label="images", scale=1)
            button = gr.Button("Search", variant="primary", elem_id="search-button")
            grid = gr.Gallery(label="Results", columns=6, height="auto", elem_id="results-grid")
            table = gr.Dataframe(headers=TEXT_HEADERS, label="Scores (cosine similarity)", elem_id="results-table",
                                 interactive=False)
            gr.Examples(EXAMPLES, inputs=query)
            button.click(search_text, [query, k], [grid, table], api_name="search_text")
            query.submit(search_text, [query, k], [grid, table], api_name=False)
        with gr.Tab("Image → captions"):
            with gr.Row():
                # image_mode=None keeps transparency: the processor composites it as in training (RGB would turn it black).
                image = gr.Image(type="pil", image_mode=None, label="Image", elem_id="image-input")
                with gr.Column():
                    chosen = gr.CheckboxGroup(languages, value=languages, label="Caption languages",
                                              elem_id="languages")
                    per_language = gr.Slider(1, 10, value=3, step=1, label="captions per language")
                    caption_button = gr.Button("Find captions", variant="primary", elem_id="captions-button")
            captions = gr.Dataframe(headers=CAPTION_HEADERS, label="Best captions", elem_id="captions-table",
                                    interactive=False, wrap=True)
            caption_button.click(image_captions, [image, chosen, per_language], captions, api_name="image_captions")
    return demo


def launch(demo: Any, host: str = "127.0.0.1", port: int | None = None, block: bool = True) -> str:
    """Serve on ``host`` only, no share link, no server-side rendering (no Node process); returns the URL."""
    _, url, _ = demo.launch(server_name=host, server_port=port, share=False, ssr_mode=False, mcp_server=False,
                            prevent_thread_lock=True, quiet=True, footer_links=["api"])
    print(f"demo running on {url}", flush=True)
    if block:
        demo.block_thread()
    return url


SPACE_APP = '''"""Hugging Face Space: CCR-1toK multilingual image search (exported by hub_scripts/demo.py --export-space)."""

import os
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
HERE = Path(__file__).resolve().parent

from modeling_ccr.search import GallerySearch  # noqa: E402
from modeling_ccr.search_demo import build_demo  # noqa: E402

model = HERE / "model" if (HERE / "model").is_dir() else None
if model is not None:
    from modeling_ccr.search import load_model  # noqa: E402

    search = GallerySearch(HERE / "index", *load_model(str(model)))
else:
    search = GallerySearch(HERE / "index")  # loads the model the index records (a Hub repo id)
build_demo(search).launch(ssr_mode=False)
'''

SPACE_CARD = """---
title: CCR-1toK image search
emoji: 🍎
colorFrom: red
colorTo: blue
sdk: gradio
sdk_version: {gradio_version}
app_file: app.py
pinned: false
---

Multilingual image search with a CCR-1toK model: type a query in any of the model's languages, or upload an
image and read its best captions in each language. Exported by `python hub_scripts/demo.py --export-space`.
"""


def export_space(search: GallerySearch, out_dir: str | Path, package_dir: str | Path, requirements: list[str]) -> Path:
    """Write a Space folder: app.py, README.md (Space card), requirements.txt, the ``modeling_ccr`` package,
    the index, and the model when it is a local folder (a Hub repo id is loaded by the Space itself)."""
    import gradio

    out_dir = Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} already exists")
    out_dir.mkdir(parents=True)
    (out_dir / "app.py").write_text(SPACE_APP, encoding="utf-8")
    (out_dir / "README.md").write_text(SPACE_CARD.format(gradio_version=gradio.__version__), encoding="utf-8")
    (out_dir / "requirements.txt").write_text("\n".join(r for r in requirements if not r.startswith("gradio")) + "\n")
    shutil.copytree(package_dir, out_dir / "modeling_ccr", ignore=shutil.ignore_patterns("__pycache__"),
                    symlinks=False)
    shutil.copytree(search.folder, out_dir / "index")
    model = search.info.get("model")
    if model and Path(model).is_dir():
        shutil.copytree(model, out_dir / "model", ignore=shutil.ignore_patterns("eval", "checkpoints"))
    return out_dir
