#!/usr/bin/env python
"""Search an index built by build_index.py: text -> images, image -> images, image -> captions.

    python hub_scripts/search.py outputs/emoji-index "roter Apfel" --k 10          # a query in any language
    python hub_scripts/search.py outputs/emoji-index photo.png                     # an image path: similar images
    python hub_scripts/search.py outputs/emoji-index photo.png --captions --languages de fr --per-language
    python hub_scripts/search.py outputs/emoji-index "pomme rouge" --json          # machine-readable

Prints rank, id and score (cosine similarity) per hit. A QUERY that names an existing file is an image.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modeling_ccr.cli import check_model_source, check_positive, run_cli  # noqa: E402
from modeling_ccr.search import GallerySearch, format_hits, load_model  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("index", help="folder written by build_index.py")
    parser.add_argument("query", help="text in any language, or the path of an image")
    parser.add_argument("--k", type=int, default=10, help="hits to return (per language with --per-language)")
    parser.add_argument("--captions", action="store_true", help="image query: return captions instead of images")
    parser.add_argument("--languages", nargs="+", default=None, help="caption languages to return")
    parser.add_argument("--per-language", action="store_true", help="the best --k captions of each language")
    parser.add_argument("--model", default=None, help="model to encode the query (default: the one that built the index)")
    parser.add_argument("--nprobe", type=int, default=None, help="IVF: lists visited per query")
    parser.add_argument("--ef-search", type=int, default=None, help="HNSW: search depth")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--device", default="cpu")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_positive(k=args.k, nprobe=args.nprobe, ef_search=args.ef_search)
    if not Path(args.index).is_dir():
        raise FileNotFoundError(f"index folder {args.index} does not exist (write one with build_index.py)")
    is_image = Path(args.query).is_file()
    if (args.captions or args.languages or args.per_language) and not is_image:
        raise ValueError(f"--captions needs an image file as the query; {args.query!r} is not a file")
    if args.model:
        check_model_source(args.model)
    model, processor = load_model(args.model, args.device) if args.model else (None, None)
    search = GallerySearch(args.index, model, processor, device=args.device)
    search.set_search_parameters(args.nprobe, args.ef_search)
    if args.captions or args.languages or args.per_language:
        hits = search.search_captions(args.query, args.k, args.languages, args.per_language)
    elif is_image:
        hits = search.search_image(args.query, args.k)
    else:
        hits = search.search_text(args.query, args.k)
    if args.json:
        kind = "captions" if args.captions or args.languages or args.per_language else "images"
        print(json.dumps({"query": args.query, "query_kind": "image" if is_image else "text", "results": kind,
                          "hits": [hit.as_dict() for hit in hits]}, ensure_ascii=False, indent=2))
    else:
        print(format_hits(hits))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
