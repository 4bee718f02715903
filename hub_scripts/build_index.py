#!/usr/bin/env python
"""Build a multilingual image-search index of your own collection with a CCR model.

Encodes every image (and every caption, when the gallery has them, for image -> text search) in batches,
keeps the unit-length embeddings in a ``datasets.Dataset`` and adds a FAISS inner-product index over them.
The folder appears only when complete (it is written to a temporary sibling, then renamed).

    python hub_scripts/build_index.py outputs/emoji-ccr/model --out outputs/emoji-index        # all EmojiCCR images
    python hub_scripts/build_index.py MODEL path/to/photos --out photos-index                  # a folder of images
    python hub_scripts/build_index.py MODEL path/to/xFlickrCO --split test --out xf-index      # any loader format
    python hub_scripts/build_index.py MODEL my_saved_dataset --index-kind hnsw --out big-index # save_to_disk data

MODEL is a model folder or Hub repo id, loaded with AutoModel / AutoProcessor (trust_remote_code=True).
GALLERY (optional; default every EmojiCCR image): a folder of image files, any format that
modeling_ccr.loaders reads, or a folder written by datasets' save_to_disk with an Image column.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modeling_ccr.cli import check_model_source, check_positive, run_cli  # noqa: E402
from modeling_ccr.search import INDEX_KINDS, IndexSpec, build_index, load_gallery, load_model  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="model folder or Hub repo id")
    parser.add_argument("gallery", nargs="?", default=None, help="images to index (default: every EmojiCCR image)")
    parser.add_argument("--out", required=True, help="index folder to write")
    parser.add_argument("--split", default=None, help="split of a multi-split gallery (default: test / all)")
    parser.add_argument("--index-kind", choices=INDEX_KINDS, default="flat",
                        help="flat: exact (default); ivf / hnsw: approximate, for very large galleries")
    parser.add_argument("--nlist", type=int, default=None, help="IVF lists (default ~2 sqrt(N))")
    parser.add_argument("--nprobe", type=int, default=IndexSpec.nprobe, help="IVF lists visited per query")
    parser.add_argument("--ef-search", type=int, default=IndexSpec.ef_search, help="HNSW search depth")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_positive(batch_size=args.batch_size, nlist=args.nlist, nprobe=args.nprobe, ef_search=args.ef_search)
    spec = IndexSpec(args.index_kind, args.nlist, args.nprobe, args.ef_search)
    if Path(args.out).exists() and not args.overwrite:
        raise FileExistsError(f"{args.out} already exists (pass --overwrite to replace it)")
    check_model_source(args.model)
    gallery = load_gallery(args.gallery, args.split)
    model, processor = load_model(args.model, args.device)
    out = build_index(model, processor, gallery, args.out, spec, model_name=args.model,
                      batch_size=args.batch_size, progress=not args.no_progress, overwrite=args.overwrite)
    print(f"indexed {len(gallery)} images ({args.index_kind}) into {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
