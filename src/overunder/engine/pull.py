"""``pull``: a reference in, a complete local image out (blobs, unpacked layers, record).

Steps, each finished before the next so that a failure leaves nothing that claims to be
complete: resolve the reference (HEAD the tag, GET the manifest by digest unless we have it,
narrow an index to one platform); fetch config and layers into the content store, verified
(several at a time; blobs already stored are skipped); unpack the layers (each once per store,
diff IDs checked); keep the manifest bytes as received; record the image with its tag and
RepoDigest. All under the store lock.

Progress goes to an observer (the CLI draws ``docker pull``'s lines from it); the engine
never prints.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from overunder.engine.images import Stores, record_image, stores, whiteout_mode
from overunder.engine.lock import store_lock
from overunder.engine.paths import EnginePaths
from overunder.errors import InvalidArgument, NotFound
from overunder.image.config import ImageConfig
from overunder.image.ids import chain_ids, short_id
from overunder.image.reference import Reference, parse
from overunder.image.store import ImageRecord
from overunder.registry.client import ManifestResult, RegistryClient
from overunder.registry.config import DockerConfig
from overunder.registry.pull import PlatformSpec, Puller, Resolved, parse_platform
from overunder.registry.transport import Transport

if TYPE_CHECKING:
    from overunder.layerfs.tar_apply import ApplyResult

__all__ = ["PullObserver", "PullResult", "open_client", "pull", "remote_tags"]

# Layers unpacked at once: tar extraction spends much of its time in syscalls and zlib,
# which release the GIL (env OVERUNDER_UNPACK_THREADS, as for load).
_raw = os.environ.get("OVERUNDER_UNPACK_THREADS", "")
UNPACK_WORKERS = int(_raw) if _raw.isdigit() and int(_raw) > 0 else min(4, os.cpu_count() or 1)


class PullObserver(Protocol):
    def message(self, text: str) -> None:
        """A whole line (``Using default tag: latest``, ``Digest: …``)."""

    def layer(self, short: str, status: str, done: int = 0, total: int = 0) -> None:
        """A layer's state (``Pulling fs layer``, ``Downloading`` with bytes, …)."""


class _Silent:
    def message(self, text: str) -> None:
        pass

    def layer(self, short: str, status: str, done: int = 0, total: int = 0) -> None:
        pass


@dataclass(frozen=True, slots=True)
class PullResult:
    reference: Reference
    digest: str  # top-level manifest digest (what Docker prints and records as RepoDigest)
    manifest_digest: str  # the platform's image manifest
    image_id: str
    downloaded: bool  # False: "Image is up to date"
    record: ImageRecord
    platform: str | None


def open_client(
    ref: Reference,
    *,
    insecure: Iterable[str] = (),
    transport: Transport | None = None,
    config_path: Path | None = None,
) -> RegistryClient:
    """A client for the registry of ``ref`` with the credentials docker config.json holds."""
    creds = DockerConfig(config_path).get(ref.auth_key)
    return RegistryClient(ref.api_host, credentials=creds, transport=transport, insecure=insecure)


def remote_tags(
    name: str,
    *,
    insecure: Iterable[str] = (),
    transport: Transport | None = None,
    config_path: Path | None = None,
) -> list[Reference]:
    """Every tag of the repository ``name`` names (for ``pull --all-tags``)."""
    ref = parse(name, default_tag=False)
    if ref.tag is not None or ref.digest is not None:
        raise InvalidArgument(
            f"tag can't be used with --all-tags/-a: {name}", hint="give the repository only"
        )
    with open_client(ref, insecure=insecure, transport=transport, config_path=config_path) as c:
        tags = c.list_tags(ref.path)
    if not tags:
        raise NotFound(f"repository {ref.familiar_name} has no tags", hint="push an image first")
    return [ref.with_tag(t) for t in sorted(tags)]


def pull(
    paths: EnginePaths,
    name: str,
    *,
    platform: str | None = None,
    insecure: Iterable[str] = (),
    observer: PullObserver | None = None,
    transport: Transport | None = None,
    config_path: Path | None = None,
    concurrency: int = 3,
) -> PullResult:
    """Pull ``name`` into the store at ``paths`` (see the module docstring)."""
    obs = observer or _Silent()
    ref = parse(name)
    want = parse_platform(platform) if platform else None
    if ref.tag_defaulted:
        obs.message(f"Using default tag: {ref.tag}")
    s = stores(paths)
    client = open_client(ref, insecure=insecure, transport=transport, config_path=config_path)
    with client, Puller(client, s.content, concurrency=concurrency) as puller:
        resolved = _resolve(puller, ref, want)
        obs.message(f"{ref.digest or ref.tag}: Pulling from {ref.path}")
        with store_lock(paths):
            before = _existing(s, ref)
            config_bytes = puller.fetch_config(resolved)
            config = ImageConfig.parse(config_bytes, digest=resolved.parsed.config.digest)
            downloaded = _fetch_and_unpack(s, puller, resolved, config, obs)
            puller.store_manifests(resolved)
            # Docker tags only what was pulled by tag (name:tag@digest pulls the digest).
            names = [ref] if ref.tag is not None and ref.digest is None else []
            record = record_image(
                s,
                config_digest=config.digest,
                manifest_digest=resolved.manifest.digest,
                manifest_media_type=resolved.manifest.media_type,
                names=names,
                repo_digests=[f"{ref.name}@{resolved.digest}"],
            )
    new = downloaded or before != record.id
    obs.message(f"Digest: {resolved.digest}")
    shown = ref.familiar if ref.digest is None else f"{ref.familiar_name}@{ref.digest}"
    if new:
        obs.message(f"Status: Downloaded newer image for {shown}")
    else:
        obs.message(f"Status: Image is up to date for {shown}")
    return PullResult(
        reference=ref,
        digest=resolved.digest,
        manifest_digest=resolved.manifest.digest,
        image_id=record.id,
        downloaded=new,
        record=record,
        platform=str(resolved.platform) if resolved.platform else None,
    )


def _resolve(puller: Puller, ref: Reference, want: PlatformSpec | None) -> Resolved:
    """Docker Hub counts a manifest GET as a pull and a HEAD as nothing: HEAD the tag, and
    GET by digest only what the store lacks."""
    target = ref.digest or ref.tag or "latest"
    if ref.digest is None:
        head = puller.client.head_manifest(ref.path, target)
        if head is not None:
            target = head.digest
    return puller.resolve(
        ref.path, target, platform=want, known=_known(puller), display=ref.familiar
    )


def _known(puller: Puller) -> _StoreLookup:
    return _StoreLookup(puller)


class _StoreLookup:
    """Manifests by digest from the content store (verified there when they were stored)."""

    def __init__(self, puller: Puller) -> None:
        self._store = puller.store

    def __call__(self, digest: str) -> ManifestResult | None:
        if not self._store.has(digest):
            return None
        from overunder.image.manifest import detect_media_type

        data = self._store.read(digest)
        return ManifestResult(data=data, media_type=detect_media_type(data), digest=digest)


def _existing(s: Stores, ref: Reference) -> str | None:
    try:
        return s.images.resolve(str(ref)).id
    except NotFound:
        return None


def _fetch_and_unpack(
    s: Stores, puller: Puller, resolved: Resolved, config: ImageConfig, obs: PullObserver
) -> bool:
    """Download the layer blobs the store lacks and unpack every layer not unpacked yet,
    pipelined: a layer unpacks as soon as its blob is verified and stored, while later blobs
    still download (layers are independent dirs; ``ensure_layer`` records the parent without
    needing it). True when anything was downloaded."""
    layers = resolved.parsed.layers
    diff_ids = config.diff_ids
    if len(diff_ids) != len(layers):
        raise InvalidArgument(
            f"image {config.digest} has {len(layers)} layers but its config lists "
            f"{len(diff_ids)} diff IDs",
            hint="the image is malformed",
        )
    chains = chain_ids(diff_ids)
    lock = threading.Lock()

    def say(short: str, status: str, done: int = 0, total: int = 0) -> None:
        with lock:
            obs.layer(short, status, done, total)

    todo = []
    for i, desc in enumerate(layers):
        if s.content.has(desc.digest):
            if s.snapshots.exists(chains[i]):
                say(short_id(desc.digest), "Already exists")
            continue
        say(short_id(desc.digest), "Pulling fs layer")
        todo.append(desc)

    def progress(digest: str, done: int, total: int) -> None:
        say(short_id(digest), "Downloading", done, total)

    downloads = dict(
        zip(
            (d.digest for d in todo),
            puller.fetch_blobs(resolved.repo, todo, on_progress=progress),
            strict=True,
        )
    )
    style, ns = whiteout_mode(s)

    def unpack(i: int) -> None:
        desc = layers[i]
        short = short_id(desc.digest)
        fut = downloads.get(desc.digest)
        if fut is not None:
            fut.result()  # the blob was checked against its digest and size on commit
            say(short, "Verifying Checksum")
            say(short, "Download complete")
        if s.snapshots.exists(chains[i]):
            return

        def apply(fs: Path) -> ApplyResult:
            from overunder.layerfs.tar_apply import apply_layer

            with s.content.open(desc.digest) as f:
                return apply_layer(f, fs, whiteout_style=style, xattr_ns=ns)

        say(short, "Extracting")
        s.snapshots.ensure_layer(
            chains[i], chains[i - 1] if i else None, apply, diff_id=diff_ids[i]
        )
        say(short, "Pull complete")

    workers = max(1, min(UNPACK_WORKERS, len(layers)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="overunder-unpack") as pool:
        jobs = [pool.submit(unpack, i) for i in range(len(layers))]
        try:
            for job in jobs:
                job.result()
        except BaseException:
            puller.cancel()  # running downloads stop at their next chunk
            for job in jobs:
                job.cancel()
            raise
    return bool(todo)
