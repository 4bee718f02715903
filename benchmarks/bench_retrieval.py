"""Retrieval evaluation speed and memory: ranks + Recall@K + MRV, against the argsort-per-row loop of
research code, and how it scales with the gallery.

1. Side by side on the xFlickr&CO test shape (2,000 images x 8 languages x 1 caption, 256-d embeddings):
   - from a precomputed score matrix (what the loop replaces): ``ranks_from_scores`` + ``retrieval_metrics``
     vs. the loop (per language: ``np.argsort`` per image row and per caption row, ``np.where`` for the
     gold position, Recall via ``np.where``, MRV via a per-instance Python loop);
   - end to end from embeddings, the matmul included on both sides.
   Runs are interleaved and repeated; medians are reported. The two must give identical ranks.
2. Scaling: 2k, 10k, 50k images x 8 languages, each in a fresh process: wall time and peak extra RSS
   of the evaluation (peak RSS reset after the embeddings are made, through /proc/self/clear_refs).

    python benchmarks/bench_retrieval.py            # full run (the 50k case takes minutes on 2 cores)
    python benchmarks/bench_retrieval.py --quick    # small sizes, a smoke test

The last line is ``speedup_vs_naive=<x>`` (from the score matrix, the loop's own job).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from modeling_ccr.retrieval import compute_retrieval_ranks, ranks_from_scores, retrieval_metrics  # noqa: E402


def make_problem(num_images: int, num_langs: int, dim: int, seed: int = 0):
    """Embeddings of N images and N x K captions (one per language), texts grouped by language; each
    caption is its image plus noise, so ranks spread over the whole range."""
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((num_images, dim), dtype=np.float32)
    texts = np.empty((num_images * num_langs, dim), dtype=np.float32)
    for k in range(num_langs):
        noise = rng.standard_normal((num_images, dim), dtype=np.float32)
        texts[k * num_images : (k + 1) * num_images] = images + (3.0 + 0.5 * k) * noise
    ids = np.tile(np.arange(num_images), num_langs)
    langs = [f"l{k}" for k in range(num_langs) for _ in range(num_images)]
    return images, texts, ids, langs


# -------------------------------------------------------------------- the research-code loop (naive)


def naive_eval(scores: np.ndarray, ids: np.ndarray, langs: list[str], languages: list[str]) -> dict:
    """The usual itm_eval loop, per language, on a full (N, T) score matrix."""
    lang_arr = np.asarray(langs)
    tr_all, ir_all, out = [], [], {}
    for lang in languages:
        cols = np.flatnonzero(lang_arr == lang)
        scores_i2t = scores[:, cols]
        img2txt = {}
        for local, image in enumerate(ids[cols]):
            img2txt.setdefault(int(image), []).append(local)
        ranks = np.zeros(scores_i2t.shape[0])
        for index, score in enumerate(scores_i2t):
            inds = np.argsort(score)[::-1]
            rank = 1e20
            for i in img2txt.get(index, []):
                tmp = np.where(inds == i)[0][0]
                if tmp < rank:
                    rank = tmp
            ranks[index] = rank
        tr_all.append(ranks + 1)
        out[lang] = {f"TR_R@{k}": 100.0 * len(np.where(ranks < k)[0]) / len(ranks) for k in (1, 5, 10)}
        scores_t2i = scores_i2t.T
        ranks = np.zeros(scores_t2i.shape[0])
        txt2img = ids[cols]
        for index, score in enumerate(scores_t2i):
            inds = np.argsort(score)[::-1]
            ranks[index] = np.where(inds == txt2img[index])[0][0]
        ir_all.append(ranks + 1)
        out[lang].update({f"IR_R@{k}": 100.0 * len(np.where(ranks < k)[0]) / len(ranks) for k in (1, 5, 10)})
    tr = np.stack(tr_all, axis=1)
    ir = np.stack(ir_all, axis=1)  # one caption per language: column k = that caption's IR rank
    mrv = {}
    for name, matrix in (("TR", tr), ("IR", ir)):
        values = [np.var([r for r in row if r < 1e20]) for row in matrix]
        mrv[name] = float(np.mean(values))
    return {"recall": out, "mrv": mrv, "tr": tr, "ir": ir}


def ours_eval_scores(scores, ids, langs):
    ranks = ranks_from_scores(scores, ids, langs)
    return ranks, retrieval_metrics(ranks)


def ours_eval_embeddings(images, texts, ids, langs):
    ranks = compute_retrieval_ranks(torch.from_numpy(images), torch.from_numpy(texts), ids, langs)
    return ranks, retrieval_metrics(ranks)


def naive_eval_embeddings(images, texts, ids, langs, languages):
    img = torch.nn.functional.normalize(torch.from_numpy(images), dim=-1)
    txt = torch.nn.functional.normalize(torch.from_numpy(texts), dim=-1)
    scores = (img @ txt.T).numpy()
    return naive_eval(scores, ids, langs, languages)


def side_by_side(num_images: int, num_langs: int, dim: int, repeats: int) -> float:
    images, texts, ids, langs = make_problem(num_images, num_langs, dim)
    languages = sorted(set(langs))
    img = torch.nn.functional.normalize(torch.from_numpy(images), dim=-1)
    txt = torch.nn.functional.normalize(torch.from_numpy(texts), dim=-1)
    scores = (img @ txt.T).numpy()

    times = {"naive_scores": [], "ours_scores": [], "naive_e2e": [], "ours_e2e": []}
    for _ in range(repeats):  # interleaved, so that load from other processes hits both alike
        t = time.perf_counter()
        naive = naive_eval(scores, ids, langs, languages)
        times["naive_scores"].append(time.perf_counter() - t)
        t = time.perf_counter()
        ranks, metrics = ours_eval_scores(scores, ids, langs)
        times["ours_scores"].append(time.perf_counter() - t)
        t = time.perf_counter()
        naive_eval_embeddings(images, texts, ids, langs, languages)
        times["naive_e2e"].append(time.perf_counter() - t)
        t = time.perf_counter()
        ours_eval_embeddings(images, texts, ids, langs)
        times["ours_e2e"].append(time.perf_counter() - t)

    tr_equal = np.array_equal(ranks.tr_ranks, naive["tr"])
    ir_equal = np.array_equal(ranks.ir_ranks, naive["ir"].T.reshape(-1))
    mrv_close = all(abs(metrics["mrv"][d] - naive["mrv"][d]) <= 1e-9 * max(1.0, naive["mrv"][d]) for d in ("TR", "IR"))
    med = {key: statistics.median(values) for key, values in times.items()}
    print(f"== side by side: {num_images} images x {num_langs} languages x 1 caption, dim {dim}, "
          f"{repeats} interleaved repeats (medians)")
    print(f"{'task':44s} {'naive loop':>12s} {'ours':>10s} {'speed-up':>9s}")
    rows = [("ranks + Recall@K + MRV from the score matrix", "scores"), ("end to end from embeddings (matmul incl.)", "e2e")]
    for label, key in rows:
        ratio = med[f"naive_{key}"] / med[f"ours_{key}"]
        print(f"{label:44s} {med[f'naive_{key}']:11.3f}s {med[f'ours_{key}']:9.3f}s {ratio:8.1f}x")
    print(f"identical TR ranks: {tr_equal}, identical IR ranks: {ir_equal}, same MRV: {mrv_close} "
          f"(MRV_TR={metrics['mrv']['TR']:.1f}, MRV_IR={metrics['mrv']['IR']:.1f}, TR R@1 avg="
          f"{metrics['recall_avg']['TR']['R@1']:.1f})")
    if not (tr_equal and ir_equal and mrv_close):
        raise SystemExit("results differ from the naive loop")
    return med["naive_scores"] / med["ours_scores"]


# ----------------------------------------------------------------------------------------- scaling


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def child(num_images: int, num_langs: int, dim: int) -> None:
    images, texts, ids, langs = make_problem(num_images, num_langs, dim)
    images_t, texts_t = torch.from_numpy(images), torch.from_numpy(texts)
    baseline = _status("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS counter (Linux >= 4.0)
        reset = True
    except OSError:
        reset = False
    t = time.perf_counter()
    ranks = compute_retrieval_ranks(images_t, texts_t, ids, langs)
    metrics = retrieval_metrics(ranks)
    elapsed = time.perf_counter() - t
    peak = _status("VmHWM")
    print("RESULT" + json.dumps({
        "images": num_images, "texts": len(ids), "seconds": elapsed, "baseline_rss": baseline, "peak_rss": peak,
        "peak_reset": reset, "embeddings_bytes": images.nbytes + texts.nbytes,
        "tr_r1": metrics["recall_avg"]["TR"]["R@1"], "mrv_tr": metrics["mrv"]["TR"],
    }))


def scaling(sizes: list[int], num_langs: int, dim: int) -> None:
    print(f"== scaling: images x {num_langs} languages x 1 caption, dim {dim}, fresh process per size")
    print(f"{'images':>7s} {'texts':>8s} {'time':>9s} {'embeddings':>11s} {'peak extra RSS':>15s} {'full score matrix':>18s}")
    for n in sizes:
        proc = subprocess.run(
            [sys.executable, __file__, "--_child", str(n), "--languages", str(num_langs), "--dim", str(dim)],
            capture_output=True, text=True, check=False,
        )
        if proc.returncode != 0:
            print(proc.stderr[-2000:])
            raise SystemExit(f"size {n} failed")
        r = json.loads([x for x in proc.stdout.splitlines() if x.startswith("RESULT")][-1][6:])
        extra = (r["peak_rss"] - r["baseline_rss"]) / 2**20
        full = n * r["texts"] * 4 / 2**30
        print(f"{n:7d} {r['texts']:8d} {r['seconds']:8.2f}s {r['embeddings_bytes'] / 2**20:9.0f}MiB "
              f"{extra:12.0f}MiB{'' if r['peak_reset'] else '*'} {full:15.2f}GiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--languages", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--sizes", default=None, help="comma-separated image counts for the scaling table")
    parser.add_argument("--_child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child is not None:
        child(args._child, args.languages, args.dim)
        return
    print(f"torch {torch.__version__}, numpy {np.__version__}, {torch.get_num_threads()} torch threads")
    n = 300 if args.quick else 2000
    speedup = side_by_side(n, args.languages, args.dim, args.repeats or (1 if args.quick else 5))
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else ([300, 600] if args.quick else [2000, 10000, 50000])
    scaling(sizes, args.languages, args.dim)
    print(f"speedup_vs_naive={speedup:.1f}")


if __name__ == "__main__":
    main()
