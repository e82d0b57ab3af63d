"""``push``: a local image to its registry, and ``login``/``logout``.

The image is found by the exact name given (Docker refuses to push an image not tagged with
the target name); its manifest goes out as the bytes stored at pull or load time, so the
registry gives it the digest it had. Blobs the registry's other repositories of ours hold are
mounted instead of uploaded (the source repository comes from the image's RepoDigests on the
same registry).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from overunder.engine.images import Stores, stores
from overunder.engine.lock import store_lock
from overunder.engine.paths import EnginePaths
from overunder.engine.pull import open_client
from overunder.errors import FailedPrecondition, InvalidArgument, NotFound
from overunder.image.ids import short_id
from overunder.image.manifest import parse_manifest
from overunder.image.reference import HUB_API_HOST, HUB_AUTH_KEY, Reference, parse
from overunder.registry.client import RegistryClient
from overunder.registry.config import Credentials, DockerConfig, normalize_server
from overunder.registry.push import Pusher
from overunder.registry.transport import Transport

__all__ = ["PushObserver", "PushResult", "local_tags", "login", "logout", "push"]


class PushObserver(Protocol):
    def message(self, text: str) -> None: ...

    def layer(self, short: str, status: str, done: int = 0, total: int = 0) -> None: ...


class _Silent:
    def message(self, text: str) -> None:
        pass

    def layer(self, short: str, status: str, done: int = 0, total: int = 0) -> None:
        pass


@dataclass(frozen=True, slots=True)
class PushResult:
    reference: Reference
    digest: str
    size: int
    blobs: dict[str, str]  # digest -> "exists" | "mounted" | "pushed"


def push(
    paths: EnginePaths,
    name: str,
    *,
    insecure: Iterable[str] = (),
    observer: PushObserver | None = None,
    transport: Transport | None = None,
    config_path: Path | None = None,
    chunk_size: int | None = None,
) -> PushResult:
    obs = observer or _Silent()
    ref = parse(name)
    if ref.digest is not None:
        raise InvalidArgument(
            f"cannot push a digest reference: {name}", hint="push NAME[:TAG] instead"
        )
    if ref.tag_defaulted:
        obs.message(f"Using default tag: {ref.tag}")
    s = stores(paths)
    with store_lock(paths, shared=True):
        return _push_locked(
            s,
            ref,
            obs=obs,
            insecure=insecure,
            transport=transport,
            config_path=config_path,
            chunk_size=chunk_size,
        )


def _push_locked(
    s: Stores,
    ref: Reference,
    *,
    obs: PushObserver,
    insecure: Iterable[str],
    transport: Transport | None,
    config_path: Path | None,
    chunk_size: int | None,
) -> PushResult:
    try:
        rec = s.images.resolve(str(ref))
    except NotFound as err:
        raise NotFound(
            f"An image does not exist locally with the tag: {ref.familiar_name}",
            hint=f"tag an image first: overunder tag IMAGE {ref.familiar}",
        ) from err
    if str(ref) not in rec.repo_tags:
        raise NotFound(
            f"An image does not exist locally with the tag: {ref.familiar_name}",
            hint=f"tag an image first: overunder tag IMAGE {ref.familiar}",
        )
    if rec.manifest_digest is None or not s.content.has(rec.manifest_digest):
        raise FailedPrecondition(
            f"image {short_id(rec.id)} has no stored manifest to push",
            hint="pull or load the image again",
        )
    data = s.content.read(rec.manifest_digest)
    manifest = parse_manifest(data, rec.manifest_media_type)
    mount_from = _mount_source(ref, rec.repo_digests)
    obs.message(f"The push refers to repository [{ref.name}]")
    client = open_client(ref, insecure=insecure, transport=transport, config_path=config_path)
    with client:
        pusher = Pusher(client, s.content, chunk_size=chunk_size)

        lock = threading.Lock()  # layers upload from several threads

        def progress(digest: str, status: str, done: int, total: int) -> None:
            with lock:
                obs.layer(short_id(digest), status, done, total)

        assert ref.tag is not None
        digest, results = pusher.push(
            ref.path,
            ref.tag,
            manifest=data,
            media_type=manifest.media_type,
            config=manifest.config,
            layers=list(reversed(manifest.layers)),  # Docker lists the top layer first
            mount_from=mount_from,
            on_progress=progress,
        )
    s.images.add(rec.id, None, repo_digests=[f"{ref.name}@{digest}"])
    obs.message(f"{ref.tag}: digest: {digest} size: {len(data)}")
    return PushResult(
        reference=ref, digest=digest, size=len(data), blobs={r.digest: r.how for r in results}
    )


def local_tags(paths: EnginePaths, name: str) -> list[Reference]:
    """Every local tag of the repository ``name`` names (for ``push --all-tags``)."""
    ref = parse(name, default_tag=False)
    if ref.tag is not None or ref.digest is not None:
        raise InvalidArgument(
            f"tag can't be used with --all-tags/-a: {name}", hint="give the repository only"
        )
    prefix = ref.name + ":"
    found = sorted(
        t for rec in stores(paths).images.list() for t in rec.repo_tags if t.startswith(prefix)
    )
    if not found:
        raise NotFound(
            f"An image does not exist locally with the tag: {ref.familiar_name}",
            hint=f"tag an image first: overunder tag IMAGE {ref.familiar_name}:TAG",
        )
    return [parse(t) for t in found]


def _mount_source(ref: Reference, repo_digests: Iterable[str]) -> str | None:
    for rd in repo_digests:
        try:
            other = parse(rd)
        except InvalidArgument:
            continue
        if other.domain == ref.domain and other.path != ref.path:
            return other.path
    return None


def _server_parts(server: str | None) -> tuple[str, str]:
    """(config key, API host) for a ``login``/``logout`` SERVER argument (Hub by default)."""
    key = normalize_server(server) if server else HUB_AUTH_KEY
    return key, (HUB_API_HOST if key == HUB_AUTH_KEY else key)


def login(
    server: str | None,
    credentials: Credentials,
    *,
    insecure: Iterable[str] = (),
    transport: Transport | None = None,
    config_path: Path | None = None,
) -> str:
    """Verify ``credentials`` against the registry, then store them; returns where they were
    stored (the config file or a credential helper)."""
    key, host = _server_parts(server)
    with RegistryClient(
        host, credentials=credentials, transport=transport, insecure=insecure
    ) as client:
        client.check_login()
    return DockerConfig(config_path).store(key, credentials)


def stored_credentials(server: str | None, *, config_path: Path | None = None) -> Credentials:
    key, _ = _server_parts(server)
    return DockerConfig(config_path).get(key)


def logout(server: str | None, *, config_path: Path | None = None) -> tuple[str, bool]:
    """Forget the credentials of ``server``; returns (its config key, whether any were kept)."""
    key, _ = _server_parts(server)
    return key, DockerConfig(config_path).erase(key)
