"""Pull, the registry half: resolve a reference to one image manifest, fetch blobs into the
content store. Unpacking layers is the engine's business (``overunder.engine.pull``).

Order of events, as ``docker pull`` does it: the tag's manifest (or index) is fetched with
the Accept of all four manifest types; an index or manifest list is narrowed to one platform
(the host's unless asked otherwise) whose manifest is fetched by digest; the config, then the
layers (several at a time) stream into the content store, each verified against its digest
and size before it is committed. The manifest bytes are kept exactly as received, so that a
push of the image later reproduces its digest.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from overunder.content import ContentStore
from overunder.content.digest import is_digest, validate_digest
from overunder.errors import IntegrityError, InvalidArgument, NotFound, OverunderError
from overunder.image import mediatypes as mt
from overunder.image.config import go_arch
from overunder.image.manifest import Descriptor, Index, Manifest, parse_index, parse_manifest
from overunder.registry.client import ManifestResult, RegistryClient

__all__ = [
    "BlobProgress",
    "PlatformSpec",
    "PullCancelled",
    "Puller",
    "Resolved",
    "host_platform",
    "parse_platform",
]

DEFAULT_CONCURRENCY = 3  # Docker's max-concurrent-downloads default

# (digest, bytes done, bytes total) while a blob downloads.
BlobProgress = Callable[[str, int, int], None]


class PullCancelled(OverunderError):
    """A download stopped because the pull as a whole failed or was interrupted."""


@dataclass(frozen=True, slots=True)
class PlatformSpec:
    os: str
    architecture: str
    variant: str | None = None

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


def host_platform() -> PlatformSpec:
    """linux/<GOARCH of uname -m>; arm64 hosts are v8, as Docker's default."""
    arch = go_arch()
    return PlatformSpec("linux", arch, "v8" if arch == "arm64" else None)


def parse_platform(text: str) -> PlatformSpec:
    """``os/arch[/variant]`` as ``--platform`` takes it (``linux/arm64/v8``)."""
    parts = text.strip().lower().split("/")
    if not 2 <= len(parts) <= 3 or not all(parts):
        raise InvalidArgument(
            f"invalid platform {text!r}",
            hint="give --platform as os/arch[/variant], e.g. linux/amd64 or linux/arm64/v8",
        )
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(parts[1], parts[1])
    return PlatformSpec(parts[0], arch, parts[2] if len(parts) == 3 else None)


def choose_platform(index: Index, want: PlatformSpec, *, name: str) -> Descriptor:
    """The index entry for ``want``. A wanted variant must match when the entry names one; an
    entry without variant matches any. NotFound listing what the index offers otherwise."""
    fallback: Descriptor | None = None
    for d in index.manifests:
        p = d.platform
        if p is None or p.os != want.os or p.architecture != want.architecture:
            continue
        if want.variant is None or p.variant == want.variant:
            return d
        if p.variant is None and fallback is None:
            fallback = d
    if fallback is not None:
        return fallback
    have = sorted({str(d.platform) for d in index.manifests if d.platform is not None})
    raise NotFound(
        f"no matching manifest for {want} in the manifest list entries of {name} "
        f"(available: {', '.join(have) or 'none'})",
        hint="choose one of the available platforms with --platform os/arch[/variant]",
    )


@dataclass(frozen=True, slots=True)
class Resolved:
    """What a reference names, down to one image manifest (nothing stored yet)."""

    repo: str
    top: ManifestResult  # what the tag or digest named: an index or the manifest itself
    manifest: ManifestResult  # the image manifest (== top when there was no index)
    parsed: Manifest
    platform: PlatformSpec | None  # the platform chosen from an index, else None

    @property
    def digest(self) -> str:
        """The digest Docker prints and records as RepoDigest: the top level one."""
        return self.top.digest


class Puller:
    """Fetches for one registry client into one content store."""

    def __init__(
        self,
        client: RegistryClient,
        store: ContentStore,
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
    ) -> None:
        self.client = client
        self.store = store
        self.concurrency = max(1, concurrency)
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        """Stop the downloads in flight at their next chunk (their partial ingests stay, so
        the next pull resumes them with Range) and drop the queued ones."""
        self._cancelled.set()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> Puller:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is not None:
            self.cancel()  # Ctrl-C or a failed layer: do not wait for whole blobs
        self.close()

    # -- manifests ------------------------------------------------------------------------

    def resolve(
        self,
        repo: str,
        reference: str,
        *,
        platform: PlatformSpec | None = None,
        known: Callable[[str], ManifestResult | None] | None = None,
        display: str | None = None,
    ) -> Resolved:
        """Fetch the manifest named by ``reference`` (tag or digest), through an index if
        needed. ``platform`` None means the host's (used only for an index). ``known`` looks
        manifests up by digest locally, saving a GET (which Docker Hub counts as a pull)."""
        top = self._manifest(repo, reference, known)
        name = display or f"{self.client.host}/{repo}:{reference}"
        chosen: PlatformSpec | None = None
        manifest = top
        if mt.is_index(top.media_type):
            index = parse_index(top.data, top.media_type)
            chosen = platform or host_platform()
            entry = choose_platform(index, chosen, name=name)
            manifest = self._manifest(repo, entry.digest, known)
            if mt.is_index(manifest.media_type):
                raise InvalidArgument(f"{name}: an index inside an index is not supported")
        elif platform is not None:
            # A single-platform image: Docker checks the config's platform; so do we, later.
            chosen = platform
        if not mt.is_manifest(manifest.media_type):
            raise InvalidArgument(
                f"{name}: unsupported manifest media type {manifest.media_type!r}",
                hint="overunder pulls Docker schema 2 and OCI images",
            )
        parsed = parse_manifest(manifest.data, manifest.media_type)
        for layer in parsed.layers:
            if not mt.is_layer(layer.media_type):
                raise InvalidArgument(
                    f"{name}: layer {layer.digest} has unsupported media type {layer.media_type!r}",
                    hint="this is not a container image (an artifact?)",
                )
        return Resolved(repo=repo, top=top, manifest=manifest, parsed=parsed, platform=chosen)

    def _manifest(
        self, repo: str, reference: str, known: Callable[[str], ManifestResult | None] | None
    ) -> ManifestResult:
        if known is not None and is_digest(reference):
            local = known(reference)
            if local is not None:
                return local
        return self.client.get_manifest(repo, reference)

    # -- blobs ------------------------------------------------------------------------------

    def fetch_config(self, resolved: Resolved) -> bytes:
        """The config blob, verified and stored; checked against a requested platform."""
        desc = resolved.parsed.config
        if not self.store.has(desc.digest):
            self.fetch_blob(resolved.repo, desc)
        data = self.store.read(desc.digest)
        try:
            doc = json.loads(data)
        except ValueError as err:
            raise IntegrityError(f"image config {desc.digest} is not JSON: {err}") from err
        want = resolved.platform
        if want is not None and not mt.is_index(resolved.top.media_type):
            arch = str(doc.get("architecture", ""))
            os_ = str(doc.get("os", ""))
            if (os_, arch) != (want.os, want.architecture):
                raise NotFound(
                    f"image {self.client.host}/{resolved.repo} is for {os_}/{arch}, "
                    f"not the requested {want}",
                    hint="drop --platform, or pull an image made for that platform",
                )
        return data

    def fetch_blob(
        self, repo: str, desc: Descriptor, *, on_progress: BlobProgress | None = None
    ) -> str:
        """Download one blob into the store (resuming an interrupted earlier ingest of it)."""
        digest = validate_digest(desc.digest)
        if self.store.has(digest):
            return digest
        done = 0

        def count(n: int) -> None:
            nonlocal done
            if self._cancelled.is_set():
                raise PullCancelled(f"download of {digest} cancelled")
            done += n
            if on_progress is not None:
                on_progress(digest, done, desc.size)

        with self.store.writer(
            ref=f"pull-{digest}", expected_digest=digest, expected_size=desc.size
        ) as w:
            if w.offset > desc.size:
                w.abort()
                return self.fetch_blob(repo, desc, on_progress=on_progress)
            done = w.offset
            return self.client.fetch_blob(repo, digest, desc.size, w, on_bytes=count)

    def fetch_blobs(
        self,
        repo: str,
        descs: Sequence[Descriptor],
        *,
        on_progress: BlobProgress | None = None,
    ) -> list[Future[str]]:
        """Start downloads (``concurrency`` at a time, in the given order); one future per
        descriptor, resolving to its digest once it is verified and stored."""
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    max_workers=self.concurrency, thread_name_prefix="overunder-pull"
                )
            pool = self._pool
        # A digest listed twice (an empty layer reused) is fetched once: two writers on one
        # ingest would lock each other out.
        started: dict[str, Future[str]] = {}
        out = []
        for d in descs:
            fut = started.get(d.digest)
            if fut is None:
                fut = pool.submit(self.fetch_blob, repo, d, on_progress=on_progress)
                started[d.digest] = fut
            out.append(fut)
        return out

    def store_manifests(self, resolved: Resolved) -> None:
        """Keep the manifest (and the index it came through) as received, by digest."""
        self.store.put(resolved.manifest.data, expected_digest=resolved.manifest.digest)
        if resolved.top.digest != resolved.manifest.digest:
            self.store.put(resolved.top.data, expected_digest=resolved.top.digest)
