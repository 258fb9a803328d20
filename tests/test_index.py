"""Index choice (table), build + tune, per-call parameters, atomic writes."""

from __future__ import annotations

import faiss
import numpy as np
import pandas as pd
import pytest

from imagesearch.index.build import build_index, build_tuned_index
from imagesearch.index.choose import (
    HNSW,
    IVF,
    IndexChoice,
    choose_index,
    fastscan_subquantizers,
    ivf_list_count,
)
from imagesearch.index.near_duplicates import near_duplicate_table
from imagesearch.index.search import exact_neighbours, gpu_available, recall_at, search
from imagesearch.index.store import IndexManifest, load_index, save_index_atomic
from imagesearch.index.tune import REFINE_K_FACTORS, recall_against_exact, tune
from imagesearch.settings import IndexSettings

MB = 2**20


EIGHTH = 4 / 8  # a budget of 1/8 of float32, in bytes per dimension
QUARTER = 4 / 4


@pytest.mark.parametrize(
    ("n", "dim", "budget", "rerank", "gpu", "factory"),
    [
        (1_000, 256, None, None, False, "Flat"),  # exact search is ~0.1 ms
        (50_000, 384, None, None, False, "Flat"),  # ~7.7 ms, under the 10 ms budget
        (1_000_000, 256, None, None, False, "HNSW32,Flat"),  # no memory limit: best recall/speed
        (1_000_000, 256, EIGHTH, None, False, "IVF4096,PQ64+256"),  # re-rank tier unbounded: 1 B/dim
        (1_000_000, 384, EIGHTH, QUARTER, False, "IVF4096,PQ128+384"),  # 1/8 RAM, 1/4 re-rank
        (1_000_000, 384, EIGHTH, 0.5 / 384, False, "IVF4096,PQ192x4fs"),  # no tier fits: float16 map
        (1_000_000, 256, 20 / 256, None, False, "IVF4096,PQ4+256"),  # 20 B/vector
        (100_000, 256, None, None, True, "IVF1024,Flat"),  # GPU: no HNSW in faiss-gpu
        (100_000, 256, 300 / 256, None, False, "IVF1024,PQ128+256"),  # HNSW needs 1280 B
        (100_000, 256, 300 / 256, 64 / 256, False, "IVF1024,PQ128+64"),  # a quarter-dimension residual
        # wider than 512: 8-bit scalar codes re-rank; PQ codes of the vectors padded to 16 columns
        (1_000_000, 1921, EIGHTH, QUARTER, False, "Pad1936,IVF4096,PQ484,Refine(SQ8)"),
        (1_000_000, 1664, EIGHTH, QUARTER, False, "IVF4096,PQ416,Refine(SQ8)"),
        (1_000_000, 1664, EIGHTH, 0.5 / 1664, False, "IVF4096,PQ832x4fs"),  # no tier fits: float16 map
    ],
)
def test_index_choice_table(n, dim, budget, rerank, gpu, factory):
    """Budgets in bytes per dimension of each vector."""
    memory = budget and budget * dim * n
    rerank_budget = rerank and rerank * dim * n
    choice = choose_index(n, dim, memory_budget_bytes=memory, rerank_budget_bytes=rerank_budget, gpu=gpu)
    assert choice.factory == factory, choice.reason
    if budget is not None:
        assert choice.bytes_per_vector <= budget * dim
    if rerank is not None:
        assert choice.rerank_bytes_per_vector <= rerank * dim


def test_pieces_and_shards_keep_the_mergeable_fastscan_index():
    choice = choose_index(1_000_000, 384, memory_budget_bytes=48e6 * 4, mergeable=True)
    assert choice.factory == "IVF4096,PQ192x4fs" and choice.rerank_bytes_per_vector == 0


def test_an_odd_width_built_in_pieces_gets_mergeable_eight_bit_codes():
    choice = choose_index(1_000_000, 1921, memory_budget_bytes=1921 * 4 / 8 * 1e6, mergeable=True)
    assert choice.factory == "IVF4096,PQ113" and choice.rerank_bytes_per_vector == 0


def test_too_small_a_budget_is_refused():
    with pytest.raises(ValueError, match="cannot hold"):
        choose_index(1_000_000, 256, memory_budget_bytes=1_000_000 * 9)


@pytest.mark.parametrize(("n", "lists"), [(1_000, 25), (100_000, 1024), (1_000_000, 4096), (10**9, 65536)])
def test_ivf_list_count(n, lists):
    assert ivf_list_count(n) == lists


@pytest.mark.parametrize(
    ("dim", "budget", "subquantizers"),
    [(256, 126, 128), (256, 12, 16), (384, 100, 192), (384, 40, 64), (256, 1, None)],
)
def test_fastscan_subquantizers(dim, budget, subquantizers):
    assert fastscan_subquantizers(dim, budget) == subquantizers


def clustered(n: int, dim: int = 32, clusters: int = 50, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    vectors = centres[rng.integers(0, clusters, n)] + 0.3 * rng.normal(size=(n, dim))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


# Small explicit factories keep training instant; the choice itself is covered by the table above.
IVF_PQ = IndexChoice(IVF, "IVF32,PQ32x4fs", 24, "test")
IVF_FLAT = IndexChoice(IVF, "IVF32,Flat", 136, "test")


def test_hnsw_tuning_reaches_the_target_recall():
    vectors = clustered(4000)
    choice = choose_index(len(vectors), 32, latency_budget_ms=0.001)
    assert choice.kind == HNSW
    result = tune(build_index(vectors, choice), HNSW, vectors, clustered(200, seed=1), target_recall=0.95)
    assert result.reached_target and result.recall_at_10 >= 0.95, result.tried


def test_pq_tuning_with_exact_rerank_reaches_the_target_recall():
    vectors = clustered(4000)
    index = build_index(vectors, IVF_PQ, train_sample=1000)
    result = tune(index, IVF, vectors, clustered(200, seed=1), target_recall=0.9, rerank_factor=10)
    assert result.reached_target and result.params["nprobe"] < 32, result.tried


def test_search_parameters_are_per_call_not_set_on_the_index():
    vectors = clustered(4000)
    index = build_index(vectors, IVF_FLAT)
    ivf = faiss.extract_index_ivf(index)
    before = ivf.nprobe
    queries = clustered(200, seed=1)
    narrow = search(index, IVF, queries, 10, {"nprobe": 1})[1]
    wide = search(index, IVF, queries, 10, {"nprobe": 32})[1]
    assert ivf.nprobe == before and not np.array_equal(narrow, wide)


def save_small(folder, tag: str, n: int = 50):
    vectors = clustered(n)
    choice = choose_index(n, 32)
    manifest = IndexManifest(
        choice.kind, choice.factory, 32, n, {}, 1, 1.0, 0.1, choice.bytes_per_vector, tag, ""
    )
    ids = pd.DataFrame({"id": [f"{tag}{i}" for i in range(n)], "path": [f"/{i}.png" for i in range(n)]})
    return save_index_atomic(folder, build_index(vectors, choice), manifest, ids, vectors)


def test_crash_mid_write_leaves_the_previous_index_whole(tmp_path, monkeypatch):
    folder = save_small(tmp_path / "index", "old")

    def crash(*args, **kwargs):
        raise OSError("disk full (injected)")

    monkeypatch.setattr(np, "save", crash)
    with pytest.raises(OSError, match="injected"):
        save_small(tmp_path / "index", "new", n=80)
    loaded = load_index(folder)
    assert loaded.manifest.model == "old" and loaded.index.ntotal == 50 and loaded.ids["id"].iloc[0] == "old0"
    monkeypatch.undo()
    assert load_index(save_small(tmp_path / "index", "new", n=80)).manifest.count == 80
    assert [p.name for p in tmp_path.iterdir()] == ["index"]  # staging of the crashed write is gone


def test_a_query_zero_beyond_its_first_columns_searches_a_narrow_view_with_the_same_answer(tmp_path):
    # the layout of a trained model's index: a shared part, then raw image features a text vector
    # leaves at zero
    n, shared, dim = 300, 64, 256
    vectors = clustered(n, dim=dim)
    choice = choose_index(n, dim)
    manifest = IndexManifest(choice.kind, choice.factory, dim, n, {}, 1, 1.0, 0.1, 4.0 * dim, "m", "")
    ids = pd.DataFrame({"id": [f"i{i}" for i in range(n)], "path": [f"/{i}.png" for i in range(n)]})
    folder = save_index_atomic(tmp_path / "ix", build_index(vectors, choice), manifest, ids, vectors)
    loaded = load_index(folder)
    texts = np.zeros((5, dim), np.float32)
    texts[:, :shared] = clustered(5, dim=shared, seed=3)
    scores, positions = loaded.search(texts, 10)
    exact_scores, exact_positions = loaded.index.search(texts, 10)
    assert list(loaded.prefix_views) == [shared]  # the narrow view answered
    np.testing.assert_array_equal(positions, exact_positions)
    np.testing.assert_allclose(scores, exact_scores, rtol=1e-5, atol=1e-6)
    loaded.search(clustered(5, dim=dim, seed=4), 10)  # an image query uses every column: no new view
    assert list(loaded.prefix_views) == [shared]


def test_folder_without_manifest_is_not_served(tmp_path):
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "index.faiss").write_bytes(b"partial")
    with pytest.raises(FileNotFoundError, match=r"manifest\.json missing"):
        load_index(tmp_path / "half")


def test_cpu_only_machines_build_on_cpu():
    if gpu_available():
        pytest.skip("a CUDA device with faiss-gpu is present: the GPU test below covers this machine")
    assert build_index(clustered(2000), IVF_FLAT).ntotal == 2000


@pytest.mark.skipif(not gpu_available(), reason="needs faiss-gpu and a CUDA device")
def test_gpu_build_returns_a_cpu_index_with_the_same_recall():
    vectors = clustered(20_000)
    choice = choose_index(20_000, 32, latency_budget_ms=0.001, gpu=True)
    index = build_index(vectors, choice)
    assert not hasattr(faiss, "GpuIndex") or not isinstance(index, faiss.GpuIndex)
    assert tune(index, choice.kind, vectors, clustered(200, seed=1), target_recall=0.9).reached_target


def test_memory_bound_build_tunes_probe_and_rerank_depth_to_the_target(tmp_path):
    from imagesearch.settings import IndexSettings

    vectors = clustered(4000)
    ids = pd.DataFrame({"id": [str(i) for i in range(4000)], "path": ""})
    config = IndexSettings(memory_budget_mb=4000 * 32 * 4 / 4 / MB, tune_queries=200)
    manifest = build_tuned_index(vectors, ids, tmp_path / "ix", model="m", config=config)
    assert manifest.factory.endswith("PQ16+32") and manifest.bytes_per_vector <= 32
    assert manifest.extra["reached_target"] and manifest.recall_at_10 >= 0.95
    assert manifest.rerank_factor == 1 and manifest.params["k_factor"] in REFINE_K_FACTORS
    assert manifest.extra["rerank_bytes_per_vector"] == 32  # residual codes inside the index
    loaded = load_index(tmp_path / "ix")
    decoded = loaded.candidate_vectors(np.arange(20))  # what the service re-scores: from that tier
    assert (decoded * vectors[:20]).sum(axis=1).min() > 0.99  # quantized, close
    held_out = clustered(100, seed=7)
    found = loaded.search(held_out, 10)[1]
    truth = exact_neighbours(vectors, held_out, 10)
    assert recall_at(found, truth) >= 0.9


def test_wide_vectors_rerank_from_scalar_codes_inside_faiss_and_take_a_filter(tmp_path):
    vectors = clustered(4000, dim=60)
    ids = pd.DataFrame({"id": [str(i) for i in range(4000)], "path": ""})
    # 60 columns count as wide when the residual PQ may have at most 32 sub-quantizers; the PQ codes
    # see them padded to 64
    config = IndexSettings(
        memory_budget_mb=4000 * 32 / MB, tune_queries=200, target_recall=0.93, max_residual_subquantizers=32
    )
    manifest = build_tuned_index(vectors, ids, tmp_path / "ix", model="m", config=config)
    assert manifest.factory == "Pad64,IVF102,PQ16,Refine(SQ8)" and manifest.bytes_per_vector == 16 + 8
    assert (
        manifest.extra["reached_target"] and manifest.params["refine"] == manifest.params["pretransform"] == 1
    )
    assert manifest.extra["rerank_bytes_per_vector"] == 60 and "scalar" in manifest.extra["rerank_vectors"]
    loaded = load_index(tmp_path / "ix")
    assert isinstance(loaded.index, faiss.IndexRefine)
    decoded = loaded.candidate_vectors(np.arange(20))  # from the scalar tier, close to the vectors
    assert (decoded * vectors[:20]).sum(axis=1).min() > 0.99
    held_out = clustered(100, dim=60, seed=7)
    assert recall_at(loaded.search(held_out, 10)[1], exact_neighbours(vectors, held_out, 10)) >= 0.9
    loaded.exact_subset_rows = 0  # the filter goes to faiss as a selector, through the re-rank tier
    even = np.arange(4000) % 2 == 0
    found = loaded.search(held_out, 10, even)[1]
    assert (found >= 0).all() and (found % 2 == 0).all()
    truth = np.flatnonzero(even)[exact_neighbours(vectors[even], held_out, 10)]
    assert recall_at(found, truth) >= 0.85  # the probed lists hold half as many kept candidates


def test_recall_against_exact_ignores_each_querys_match_with_itself():
    vectors = clustered(500)
    queries = np.arange(0, 500, 10)
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(vectors)

    def always_self_then_exact(batch: np.ndarray, k: int) -> np.ndarray:
        return exact.search(batch, k)[1]

    def self_then_nothing(batch: np.ndarray, k: int) -> np.ndarray:
        own = exact.search(batch, 1)[1]  # the query itself, then no neighbour at all
        return np.hstack([own, np.full((len(batch), k - 1), -1)])

    assert recall_against_exact(always_self_then_exact, vectors, queries) == 1.0
    # counting the self-match would credit this search with 1/10 per query; it found no neighbour
    assert recall_against_exact(self_then_nothing, vectors, queries) == 0.0


def test_an_index_built_in_pieces_and_kept_in_shards_answers_like_the_whole(tmp_path):
    from imagesearch.common.executor import InProcess
    from imagesearch.index.pieces import piece_bounds

    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((3000, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = pd.DataFrame({"id": [f"{i % 16:x}{i:07d}" for i in range(3000)], "path": "x.png"})
    ids = ids.sort_values("id", ignore_index=True)
    bounds = piece_bounds(ids["id"].str[0].tolist())
    assert len(bounds) == 17 and bounds[0] == 0 and bounds[-1] == 3000
    config = IndexSettings(memory_budget_mb=0.05, train_sample=1000, tune_queries=50)
    manifest = build_tuned_index(
        vectors,
        ids,
        tmp_path / "index",
        model="m",
        config=config,
        executor=InProcess(),
        bounds=bounds,
        shards=3,
    )
    assert manifest.kind == "ivf" and manifest.extra["pieces"] == 16
    counts = [shard["count"] for shard in manifest.extra["shards"]]
    assert len(counts) == 3 and sum(counts) == 3000 and min(counts) > 0
    whole, sharded = load_index(tmp_path / "index"), load_index(tmp_path / "index", InProcess())
    assert sharded.index is None and sharded.ntotal == 3000
    expected, got = whole.search(vectors[:40], 10), sharded.search(vectors[:40], 10)
    assert (got[1] == expected[1]).all() and np.allclose(got[0], expected[0], atol=1e-5)


def test_the_near_duplicate_table_holds_the_pairs_of_the_cosine_matrix():
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(40, 64))
    vectors = (centres[rng.integers(0, 40, 500)] + 0.03 * rng.normal(size=(500, 64))).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = faiss.IndexFlatIP(64)
    index.add(vectors)
    table = near_duplicate_table(index, 0.97, max_rows=500)
    cosine = vectors @ vectors.T
    near = cosine > 0.97
    np.fill_diagonal(near, False)
    assert 1_000 < near.sum() < 20_000  # groups of near-duplicates, and pairs that are not
    # candidates in any order, some past the covered rows (as rows added since the build are)
    positions = rng.permutation(600)[:150]
    covered = positions < 500
    expected = np.zeros((150, 150), dtype=bool)
    expected[np.ix_(covered, covered)] = near[np.ix_(positions[covered], positions[covered])]
    found = table.pairs_among(positions)
    on_the_edge = np.zeros_like(expected)  # cosines within rounding of the threshold may go either way
    on_the_edge[np.ix_(covered, covered)] = (
        np.abs(cosine - 0.97)[np.ix_(positions[covered], positions[covered])] < 1e-5
    )
    assert (found == expected)[~on_the_edge].all() and found.sum() > 10
    assert near_duplicate_table(index, 0.97, max_rows=499) is None  # too many rows to pair at load
    assert near_duplicate_table(faiss.IndexFlatL2(64), 0.97, max_rows=500) is None
    copies = faiss.IndexFlatIP(64)
    copies.add(np.repeat(vectors[:1], 100, axis=0))  # 9,900 pairs
    assert near_duplicate_table(copies, 0.97, max_rows=500, max_pairs=5_000) is None
    assert near_duplicate_table(copies, 0.97, max_rows=500, max_pairs=10_000).neighbours.size == 9_900
