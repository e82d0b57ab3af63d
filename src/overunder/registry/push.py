"""Push, the registry half: blobs from the content store, then the manifest bytes verbatim.

For each blob (layers in parallel, then the config): a HEAD skips what the repository has;
a cross-repository mount (``POST …/uploads/?mount=<d>&from=<repo>``) reuses a blob the
registry holds in another repository of ours; otherwise the blob is uploaded, monolithic or in
chunks (strictly in order, always to the latest ``Location``). Only when every blob is there
is the manifest PUT, with exactly the bytes stored at pull or load time, so an image pulled
and pushed back keeps its digest.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from overunder.content import ContentStore
from overunder.image.manifest import Descriptor
from overunder.registry.client import RegistryClient

__all__ = ["BlobPushed", "Pusher"]

DEFAULT_CONCURRENCY = 5  # Docker's max-concurrent-uploads default

# (digest, status, bytes done, bytes total): status is one of "Preparing", "Pushing",
# "Pushed", "Layer already exists", "Mounted from <repo>".
PushProgress = Callable[[str, str, int, int], None]


@dataclass(frozen=True, slots=True)
class BlobPushed:
    digest: str
    how: str  # "exists" | "mounted" | "pushed"


class Pusher:
    def __init__(
        self,
        client: RegistryClient,
        store: ContentStore,
        *,
        chunk_size: int | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
    ) -> None:
        self.client = client
        self.store = store
        self.chunk_size = chunk_size
        self.concurrency = max(1, concurrency)

    def push_blob(
        self,
        repo: str,
        desc: Descriptor,
        *,
        mount_from: str | None = None,
        on_progress: PushProgress | None = None,
    ) -> BlobPushed:
        size = self.store.size(desc.digest)  # NotFound when the store lacks it
        done = 0

        def count(n: int) -> None:
            nonlocal done
            done += n
            if on_progress is not None:
                on_progress(desc.digest, "Pushing", done, size)

        how = self.client.upload_blob(
            repo,
            desc.digest,
            size,
            lambda: self.store.open(desc.digest),
            chunk_size=self.chunk_size,
            mount_from=mount_from,
            on_bytes=count,
        )
        if on_progress is not None:
            status = {
                "exists": "Layer already exists",
                "mounted": f"Mounted from {mount_from}",
                "pushed": "Pushed",
            }[how]
            on_progress(desc.digest, status, 0, 0)
        return BlobPushed(desc.digest, how)

    def push(
        self,
        repo: str,
        reference: str,
        *,
        manifest: bytes,
        media_type: str,
        config: Descriptor,
        layers: Sequence[Descriptor],
        mount_from: str | None = None,
        on_progress: PushProgress | None = None,
    ) -> tuple[str, list[BlobPushed]]:
        """Blobs, then the manifest under ``reference`` (a tag or the digest). Returns the
        manifest digest and what happened to each blob (layers first, config last)."""
        unique: dict[str, Descriptor] = {}
        for d in layers:
            unique.setdefault(d.digest, d)
        if on_progress is not None:
            for d in unique.values():
                on_progress(d.digest, "Preparing", 0, 0)
        with ThreadPoolExecutor(
            max_workers=self.concurrency, thread_name_prefix="overunder-push"
        ) as pool:
            futures = [
                pool.submit(self.push_blob, repo, d, mount_from=mount_from, on_progress=on_progress)
                for d in unique.values()
            ]
            results = [f.result() for f in futures]
        results.append(self.push_blob(repo, config, mount_from=mount_from))
        digest = self.client.put_manifest(repo, reference, manifest, media_type)
        return digest, results
