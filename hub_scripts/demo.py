#!/usr/bin/env python
"""Gradio demo of multilingual image search: a query in any language -> image grid with scores; an uploaded
image -> its best captions in each language (language selector). Serves on 127.0.0.1 only, no share link,
analytics off.

    python hub_scripts/demo.py                                   # the main job's model on every EmojiCCR image
    python hub_scripts/demo.py MODEL --gallery path/to/photos    # your model and images (index built once)
    python hub_scripts/demo.py --index outputs/emoji-index       # an index from build_index.py (and its model)
    python hub_scripts/demo.py --export-space space/             # the files of a Hugging Face Space

Without --index, the index is built on first use next to a local model (<model>/../search-index) or in
./search-index, and reused afterwards.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modeling_ccr.cli import check_model_source, run_cli  # noqa: E402
from modeling_ccr.search import GallerySearch, build_index, load_gallery, load_model  # noqa: E402
from modeling_ccr.search_demo import build_demo, export_space, launch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MAIN_MODEL = "outputs/emoji-ccr/model"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default=None,
                        help=f"model folder or Hub repo id (default: the index's model, else {MAIN_MODEL})")
    parser.add_argument("--index", default=None, help="index folder from build_index.py")
    parser.add_argument("--gallery", default=None, help="images to index when there is no index yet "
                        "(default: every EmojiCCR image)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--export-space", default=None, metavar="DIR", help="write a Space folder and exit")
    parser.add_argument("--device", default="cpu")
    return parser.parse_args(argv)


def open_search(args: argparse.Namespace) -> GallerySearch:
    if args.index is not None:
        model = load_model(args.model, args.device) if args.model else (None, None)
        return GallerySearch(args.index, *model, device=args.device)
    name = args.model or MAIN_MODEL
    local = Path(name)
    if name == MAIN_MODEL and not local.is_dir():
        raise FileNotFoundError(f"{MAIN_MODEL} does not exist: train the main job first (make main) or pass MODEL")
    index = local.parent / "search-index" if local.is_dir() else Path("search-index")
    model, processor = load_model(name, args.device)
    if not index.is_dir():
        print(f"building the search index {index} (once)", flush=True)
        build_index(model, processor, load_gallery(args.gallery), index, model_name=name)
    return GallerySearch(index, model, processor)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be in 1..65535, got {args.port}")
    if args.index is not None and not Path(args.index).is_dir():
        raise FileNotFoundError(f"index folder {args.index} does not exist (write one with build_index.py)")
    if args.model:
        check_model_source(args.model)
    search = open_search(args)
    if args.export_space:
        from tools.list_requirements import requirements

        out = export_space(search, args.export_space, ROOT / "modeling_ccr", requirements(dev=False))
        print(f"wrote the Space files to {out}")
        return 0
    launch(build_demo(search), args.host, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
