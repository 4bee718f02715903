"""Approximate image search (IVF, HNSW) against the exact flat index: build time, query latency, recall@10.

Every index is built the way ``build_index.py`` builds it (``modeling_ccr.search.add_embedding_index``:
``Dataset.add_faiss_index`` over an ``embedding`` column of unit vectors, inner-product metric) and searched
one query at a time, as an interactive search is. Recall@10 is measured against the flat index's exact
top-10 of the same queries; the speed-up is the ratio of median (p50) query latencies, flat / approximate,
measured in the same run, the runs interleaved.

Vectors (D = 256, L2-normalised):
- ``clustered`` (the headline): a mixture of 4,096 clusters with centres uniform on the sphere; each vector is
  its centre plus Gaussian noise such that its cosine to the centre is ~0.7 (two members of one cluster
  ~0.5, two clusters ~0). Real embedding collections are clustered like this (many near-duplicate and
  same-topic images); the queries are fresh draws from the same mixture, not gallery members.
- ``uniform``: uniform on the sphere, the worst case for any partitioning index (no structure to exploit;
  every vector is nearly orthogonal to every other), reported at 100k for reference.

    flock /tmp/cpu.lock env OMP_NUM_THREADS=2 python benchmarks/bench_search.py          # 100k and 1M (a few minutes)
    python benchmarks/bench_search.py --quick                                             # smoke test, seconds

The last line is ``ann_recall_at_10=<x> ann_speedup_vs_flat=<y>`` for IVF on the largest clustered gallery.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
from datasets import Dataset  # noqa: E402

from modeling_ccr.search import COLUMN, IndexSpec, add_embedding_index  # noqa: E402

DIM = 256
CLUSTERS = 4096
NOISE = 0.064  # per-dimension std: cos(vector, centre) = 1 / sqrt(1 + 256 * 0.064^2) ~ 0.7


def make_vectors(n: int, kind: str, rng: np.random.Generator, centres: np.ndarray | None) -> np.ndarray:
    """``n`` unit vectors of the given distribution, made in chunks (bounded temporary memory)."""
    out = np.empty((n, DIM), dtype=np.float32)
    for start in range(0, n, 100_000):
        stop = min(n, start + 100_000)
        noise = rng.standard_normal((stop - start, DIM), dtype=np.float32)
        if kind == "clustered":
            chunk = centres[rng.integers(0, len(centres), stop - start)] + NOISE * noise
        else:
            chunk = noise
        out[start:stop] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    return out


def as_dataset(vectors: np.ndarray) -> Dataset:
    """Zero-copy: an ``embedding`` column of fixed-size float32 lists over the numpy buffer."""
    column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), DIM)
    return Dataset(pa.table({COLUMN: column}))


def build(vectors: np.ndarray, spec: IndexSpec) -> tuple[object, float]:
    dataset = as_dataset(vectors)
    start = time.perf_counter()
    add_embedding_index(dataset, spec)
    return dataset.get_index(COLUMN).faiss_index, time.perf_counter() - start


def latencies(index, queries: np.ndarray, k: int = 10) -> list[float]:
    out = []
    for query in queries:
        start = time.perf_counter()
        index.search(query[None, :], k)
        out.append(time.perf_counter() - start)
    return out


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    k = exact.shape[1]
    return float(np.mean([len(set(f) & set(e)) / k for f, e in zip(found, exact)]))


def run_case(kind: str, n: int, specs: dict[str, IndexSpec], num_queries: int, latency_queries: int,
             rounds: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    centres = make_vectors(CLUSTERS, "uniform", rng, None) if kind == "clustered" else None
    vectors = make_vectors(n, kind, rng, centres)
    queries = make_vectors(num_queries, kind, rng, centres)
    indexes, rows = {}, []
    for name, spec in {"flat": IndexSpec("flat"), **specs}.items():
        index, seconds = build(vectors, spec)
        indexes[name] = index
        rows.append({"vectors": kind, "n": n, "index": name, "build_s": seconds, "spec": spec})
    exact = indexes["flat"].search(queries, 10)[1]
    timed = {name: [] for name in indexes}
    for _ in range(rounds):  # interleaved, so a busy neighbour slows every index alike
        for name, index in indexes.items():
            timed[name] += latencies(index, queries[:latency_queries])
    flat_p50 = statistics.median(timed["flat"])
    for row in rows:
        name, times = row["index"], timed[row["index"]]
        row["p50_ms"] = 1e3 * statistics.median(times)
        row["p95_ms"] = 1e3 * float(np.percentile(times, 95))
        row["recall_at_10"] = recall_at_k(indexes[name].search(queries, 10)[1], exact)
        row["speedup"] = flat_p50 / statistics.median(times)
    del indexes, vectors
    gc.collect()
    return rows


def describe(spec: IndexSpec, n: int) -> str:
    if spec.kind == "ivf":
        return f"{spec.factory(n)[0]} nprobe={spec.nprobe}"
    if spec.kind == "hnsw":
        return f"{spec.factory(n)[0]} efSearch={spec.ef_search}"
    return "Flat (exact)"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10k vectors only (smoke test)")
    parser.add_argument("--sizes", default=None, help="comma-separated gallery sizes (default 100000,1000000)")
    parser.add_argument("--queries", type=int, default=1000, help="queries for recall@10")
    parser.add_argument("--nprobe", type=int, default=IndexSpec.nprobe)
    parser.add_argument("--ef-search", type=int, default=IndexSpec.ef_search)
    parser.add_argument("--hnsw-max", type=int, default=100_000, help="largest gallery also indexed with HNSW "
                        "(its build is slow on 2 cores)")
    args = parser.parse_args(argv)
    import faiss

    sizes = [10_000] if args.quick else [int(s) for s in (args.sizes or "100000,1000000").split(",")]
    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads; D={DIM}; queries one at a time")
    results = []
    for n in sizes:
        specs = {"ivf": IndexSpec("ivf", nprobe=args.nprobe)}
        if n <= args.hnsw_max:
            specs["hnsw"] = IndexSpec("hnsw", ef_search=args.ef_search)
        latency_queries = 100 if n >= 500_000 else 300
        results += run_case("clustered", n, specs, args.queries, latency_queries, rounds=2)
    if not args.quick and 100_000 in sizes:
        results += run_case("uniform", 100_000, {"ivf": IndexSpec("ivf", nprobe=args.nprobe)}, args.queries, 300, 2)
    print(f"{'vectors':10s} {'N':>9s} {'index':34s} {'build':>8s} {'p50':>9s} {'p95':>9s} {'recall@10':>9s} "
          f"{'speed-up':>8s}")
    for row in results:
        print(f"{row['vectors']:10s} {row['n']:9d} {describe(row['spec'], row['n']):34s} {row['build_s']:7.1f}s "
              f"{row['p50_ms']:7.2f}ms {row['p95_ms']:7.2f}ms {row['recall_at_10']:9.3f} {row['speedup']:7.1f}x")
    headline = [r for r in results if r["vectors"] == "clustered" and r["index"] == "ivf" and r["n"] == max(sizes)][0]
    print(f"ann_recall_at_10={headline['recall_at_10']:.3f} ann_speedup_vs_flat={headline['speedup']:.1f}")


if __name__ == "__main__":
    main()
