"""`RayExecutor`: the executor seam's methods on a Ray cluster.

- Backfill on Ray Data: catalog rows -> decode/preprocess tasks on CPUs -> the image tower in an actor
  pool (one model load per actor, `num_gpus` per actor when set) -> batches back to the driver in shard
  order, which writes the same parquet shards as the in-process path. Ray Data restarts a killed actor
  and retries its batches; the shard writer keeps what finished, so a failed run resumes.
- Index pieces: the trained empty index goes to the object store once; one task per piece adds its rows.
- Shard search: S x R actors each hold one shard file; a query batch fans out to one replica of every
  shard and the top-k lists are merged.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import ray

from imagesearch.cluster.runtime import connect, worker_label
from imagesearch.common.executor import EmbeddedBatch
from imagesearch.common.images import DecodeLimits
from imagesearch.common.progress import Progress, progress_bar
from imagesearch.embeddings.reader import CatalogImages
from imagesearch.index.pieces import (
    deserialize,
    fill_piece,
    merge_top_k,
    read_shard_file,
    search_shard,
    serialize,
    vectors_in_file,
)
from imagesearch.models.encoders import Encoder
from imagesearch.models.preprocess import Preprocessor
from imagesearch.settings import ClusterSettings


def decode_batch(batch: dict[str, np.ndarray], preprocessor: Preprocessor, limits: DecodeLimits) -> dict:
    """Decode task: preprocessed pixels of each row (zeros and a reason where the image is unreadable)."""
    images = CatalogImages(list(batch["path"]), preprocessor, limits)
    decoded = [images[i] for i in range(len(images))]
    shape = next((p.shape for _, p, _ in decoded if p is not None), (3, preprocessor.size, preprocessor.size))
    pixels = np.stack([p.numpy() if p is not None else np.zeros(shape, np.float32) for _, p, _ in decoded])
    return {
        "id": batch["id"],
        "shard": batch["shard"],
        "pixels": pixels,
        "error": np.array([reason for _, _, reason in decoded], dtype=object),
    }


class ImageTower:
    """Actor: one model load, then the forward pass of every batch it is handed."""

    def __init__(self, encoder: Encoder | ray.ObjectRef, use_gpu: bool):
        import torch

        if isinstance(encoder, ray.ObjectRef):  # put once in the object store, fetched by each actor
            encoder = ray.get(encoder)
        if use_gpu and torch.cuda.is_available():
            encoder.device = torch.device("cuda")
            encoder.image_model = encoder.image_model.to(encoder.device)
        self.encoder, self.worker = encoder, worker_label()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict:
        import torch

        ok = batch["error"] == ""
        vectors = np.zeros((len(ok), self.encoder.dim), np.float32)
        if ok.any():
            vectors[ok] = self.encoder.encode_pixels(torch.from_numpy(batch["pixels"][ok]))
        return {
            "id": batch["id"],
            "shard": batch["shard"],
            "vector": vectors,
            "error": batch["error"],
            "worker": np.full(len(ok), self.worker, dtype=object),
        }


@ray.remote
def fill_piece_task(trained: np.ndarray, vectors: np.ndarray) -> tuple[np.ndarray, str]:
    return fill_piece(trained, vectors), worker_label()


@ray.remote(max_restarts=-1, max_task_retries=-1)
class ShardSearcher:
    """One shard file held in memory; answers top-k with global row positions."""

    def __init__(self, file: str, offset: int, kind: str, params: dict):
        self.index, self.offset, self.kind, self.params = read_shard_file(Path(file)), offset, kind, params

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return search_shard(self.index, self.offset, self.kind, self.params, queries, k)

    def where(self) -> str:
        return worker_label()


class RayShards:
    """A query batch goes to one replica of every shard (round robin); the lists are merged."""

    def __init__(self, files: list[Path], offsets: list[int], kind: str, params: dict, replicas: int):
        self.replicas = [
            [
                ShardSearcher.options(scheduling_strategy="SPREAD").remote(str(f), o, kind, params)
                for _ in range(replicas)
            ]
            for f, o in zip(files, offsets, strict=True)
        ]
        self.turn = itertools.count()
        self.ntotal = sum(vectors_in_file(f) for f in files)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        turn = next(self.turn)
        refs = [group[turn % len(group)].search.remote(queries, k) for group in self.replicas]
        return merge_top_k(ray.get(refs), k)

    def workers(self) -> list[str]:
        return ray.get([actor.where.remote() for group in self.replicas for actor in group])

    def close(self) -> None:
        for actor in (a for group in self.replicas for a in group):
            ray.kill(actor)
        self.replicas = []


class RayExecutor:
    name = "ray"

    def __init__(self, config: ClusterSettings):
        self.config = config
        self.piece_workers: list[str] = []  # where the last index pieces were filled
        connect(config)

    def embed_batches(
        self,
        encoder: Encoder,
        todo: pd.DataFrame,
        *,
        batch_size: int,
        limits: DecodeLimits,
        progress: Progress,
    ) -> Iterator[EmbeddedBatch]:
        if todo.empty:
            return
        self._check_room_for_towers()
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True  # the shard writer needs shard order
        context.enable_progress_bars = False
        chunks = [todo.iloc[i : i + batch_size] for i in range(0, len(todo), batch_size)]
        decoded = ray.data.from_pandas(chunks).map_batches(
            partial(decode_batch, preprocessor=encoder.preprocessor, limits=limits),
            batch_format="numpy",
            batch_size=batch_size,
            num_cpus=self.config.decode_cpus,
        )
        encoder_ref = ray.put(encoder)  # held for the whole run: restarted actors read it again
        embedded = decoded.map_batches(
            ImageTower,
            fn_constructor_args=(encoder_ref, self.config.gpus_per_actor > 0),
            batch_format="numpy",
            batch_size=batch_size,
            compute=ray.data.ActorPoolStrategy(size=self.config.embed_actors),
            num_cpus=self.config.actor_cpus,
            num_gpus=self.config.gpus_per_actor,
            ray_remote_args_fn=lambda: {"scheduling_strategy": "SPREAD"},  # a tower per node first
        )
        bar = progress_bar(progress, total=len(todo), desc="embedding on ray", unit="img")
        for batch in embedded.iter_batches(batch_size=None, batch_format="numpy"):
            bar.update(len(batch["id"]))
            yield from _shard_runs(batch)
        bar.close()

    def _check_room_for_towers(self) -> None:
        """The actor pool holds its CPUs for the whole run: with none left for decode tasks the run
        would wait forever, so say so instead."""
        needed = self.config.embed_actors * self.config.actor_cpus + self.config.decode_cpus
        available = ray.cluster_resources().get("CPU", 0)
        if needed > available:
            raise ValueError(
                f"the cluster has {available:g} CPUs; {self.config.embed_actors} image-tower actors x "
                f"{self.config.actor_cpus:g} CPU plus one {self.config.decode_cpus:g}-CPU decode task need "
                f"{needed:g}: lower CLUSTER__EMBED_ACTORS / CLUSTER__ACTOR_CPUS or add nodes"
            )

    def fill_pieces(self, trained, vectors: np.ndarray, bounds: list[int]):
        blob = ray.put(serialize(trained))
        spread = fill_piece_task.options(scheduling_strategy="SPREAD")
        refs = [spread.remote(blob, vectors[lo:hi]) for lo, hi in itertools.pairwise(bounds)]
        filled = ray.get(refs)
        self.piece_workers = [worker for _, worker in filled]
        return [deserialize(piece) for piece, _ in filled]

    def shard_search(self, files: list[Path], offsets: list[int], kind: str, params: dict) -> RayShards:
        return RayShards(files, offsets, kind, params, self.config.shard_replicas)


def _shard_runs(batch: dict[str, np.ndarray]) -> Iterator[EmbeddedBatch]:
    """Split an output batch into runs of one shard (rows arrive sorted by shard)."""
    shards = batch["shard"]
    starts = [i for i in range(len(shards)) if i == 0 or shards[i] != shards[i - 1]]
    for lo, hi in itertools.pairwise([*starts, len(shards)]):
        error, ids = batch["error"][lo:hi], batch["id"][lo:hi]
        ok = error == ""
        yield EmbeddedBatch(
            shard=str(shards[lo]),
            ids=[str(i) for i in ids[ok]],
            vectors=batch["vector"][lo:hi][ok],
            failed={str(i): str(e) for i, e in zip(ids[~ok], error[~ok], strict=True)},
            worker=str(batch["worker"][lo]),
        )
