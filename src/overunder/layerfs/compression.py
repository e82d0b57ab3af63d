"""Layer streams: sniff the compression, decompress in bounded chunks, hash what comes out.

A layer blob is gzip, zstd or a plain tar; registries label it, but the label can lie, so the
first bytes decide (as containerd's ``compression.DecompressStream`` does). :class:`LayerReader`
is a file-like ``read(n)`` over the *decompressed* bytes that

* hashes every decompressed byte with sha256 (the layer's diff ID, once drained to the end),
* refuses to produce more than ``max_bytes`` (a decompression bomb stops with InvalidArgument
  before it fills the disk or memory), and
* turns corrupt or truncated compressed data into IntegrityError naming the layer.

Memory stays flat: gzip output is bounded per call (``max_length``), and zstd input is fed in
1 KiB slices because ``zstandard``'s decompressobj has no output bound and one zstd block of
4 bytes may expand to 128 KiB (so one call yields at most ~32 MiB).
``zstandard``'s ``stream_reader`` would bound the output but reports a truncated frame as a
clean end, which we must not accept.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
import zlib
from enum import StrEnum
from typing import BinaryIO, Final, Protocol

from overunder.errors import IntegrityError, InvalidArgument

__all__ = [
    "DEFAULT_MAX_BYTES",
    "MAX_BYTES_ENV",
    "Compression",
    "LayerReader",
    "sniff",
]

MAX_BYTES_ENV: Final = "OVERUNDER_MAX_LAYER_BYTES"


def _default_max_bytes() -> int:
    raw = os.environ.get(MAX_BYTES_ENV, "")
    if raw.strip().isdigit():
        return int(raw)
    # Real layers reach tens of GB (CUDA, ML images); a bomb aims at TB.
    return 64 * 1024**3


DEFAULT_MAX_BYTES: Final = _default_max_bytes()
"""Cap on the decompressed size of one layer: 64 GiB, or ``$OVERUNDER_MAX_LAYER_BYTES`` as set
when overunder started."""

_GZIP_MAGIC: Final = b"\x1f\x8b"
_ZSTD_MAGIC: Final = b"\x28\xb5\x2f\xfd"
_IN_CHUNK: Final = 1 << 20  # compressed bytes read from the source at a time
_OUT_CHUNK: Final = 1 << 20  # decompressed bytes produced per refill
_ZSTD_SLICE: Final = 1024  # see module docstring: bounds one zstd call to ~32 MiB of output


class Compression(StrEnum):
    """What a layer stream is compressed with."""

    GZIP = "gzip"
    ZSTD = "zstd"
    NONE = "none"


def sniff(head: bytes) -> Compression:
    """The compression of a stream from its first bytes (4 are enough)."""
    if head.startswith(_GZIP_MAGIC):
        return Compression.GZIP
    if head.startswith(_ZSTD_MAGIC):
        return Compression.ZSTD
    # zstd skippable frames (magic 0x184D2A50..5F, little endian) may lead a zstd stream.
    if len(head) >= 4 and head[1:4] == b"\x2a\x4d\x18" and head[0] & 0xF0 == 0x50:
        return Compression.ZSTD
    return Compression.NONE


class _Decoder(Protocol):
    def feed(self, data: bytes) -> bytes: ...
    def pending(self) -> bool: ...
    def finish(self) -> None: ...


class _GzipDecoder:
    """Multi-member gzip (``cat a.gz b.gz`` is one valid stream, as Go's reader accepts)."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self._tail = b""  # input not yet consumed because of the output bound
        self._between = False  # a member ended; the next bytes must start a new one
        self._started = False

    def _fail(self, what: str) -> IntegrityError:
        return IntegrityError(
            f"layer {self._name}: {what}",
            hint="the blob is damaged or incomplete; delete it and pull or load it again",
        )

    def pending(self) -> bool:
        # Fewer than 2 bytes after a member cannot be judged: wait for more input.
        return bool(self._tail) and not (self._between and len(self._tail) < 2)

    def feed(self, data: bytes) -> bytes:
        """Decompress ``self._tail + data`` up to the output bound; keep the rest."""
        buf = self._tail + data if self._tail else data
        self._tail = b""
        if not buf:
            return b""
        if self._between:
            if len(buf) < 2:
                self._tail = buf
                return b""
            if not buf.startswith(_GZIP_MAGIC):
                raise self._fail("unexpected data after the end of the gzip stream")
            self._d = zlib.decompressobj(16 + zlib.MAX_WBITS)
            self._between = False
        self._started = True
        try:
            out = self._d.decompress(buf, _OUT_CHUNK)
        except zlib.error as err:
            raise self._fail(f"corrupt gzip data ({err})") from err
        if self._d.eof:
            self._between = True
            self._tail = self._d.unused_data
        else:
            self._tail = self._d.unconsumed_tail
        return out

    def finish(self) -> None:
        if self._tail and self._between:
            raise self._fail("unexpected data after the end of the gzip stream")
        if self._started and not self._between:
            raise self._fail("the gzip stream is truncated (it ends inside compressed data)")


class _ZstdDecoder:
    """Multi-frame zstd, fed in small slices so one call cannot balloon (module docstring)."""

    def __init__(self, name: str) -> None:
        self._name = name
        import zstandard  # only zstd layers pay for importing it

        self._zstd = zstandard
        self._dctx = zstandard.ZstdDecompressor()
        self._d = self._dctx.decompressobj()
        self._tail = b""
        self._in_frame = False

    def _fail(self, what: str) -> IntegrityError:
        return IntegrityError(
            f"layer {self._name}: {what}",
            hint="the blob is damaged or incomplete; delete it and pull or load it again",
        )

    def pending(self) -> bool:
        return bool(self._tail)

    def feed(self, data: bytes) -> bytes:
        buf = self._tail + data if self._tail else data
        self._tail = b""
        view = memoryview(buf)
        outs: list[bytes] = []
        produced = 0
        pos = 0
        while pos < len(view) and produced < _OUT_CHUNK:
            piece = view[pos : pos + _ZSTD_SLICE]
            pos += len(piece)
            self._in_frame = True
            try:
                out = self._d.decompress(piece)
            except self._zstd.ZstdError as err:
                raise self._fail(f"corrupt zstd data ({err})") from err
            if out:
                outs.append(out)
                produced += len(out)
            if self._d.eof:
                self._in_frame = False
                # The next frame starts in the unused bytes of this slice.
                rest = bytes(self._d.unused_data)
                self._d = self._dctx.decompressobj()
                if rest:
                    buf = rest + bytes(view[pos:])
                    view = memoryview(buf)
                    pos = 0
        if pos < len(view):
            self._tail = bytes(view[pos:])
        return b"".join(outs)

    def finish(self) -> None:
        if self._in_frame:
            raise self._fail("the zstd stream is truncated (it ends inside a frame)")


class _Plain:
    def __init__(self) -> None:
        self._tail = b""

    def pending(self) -> bool:
        return bool(self._tail)

    def feed(self, data: bytes) -> bytes:
        out = self._tail + data if self._tail else data
        self._tail = b""
        return out

    def finish(self) -> None:
        return None


class LayerReader:
    """``read(n)`` over the decompressed bytes of ``source``, hashed and size-capped.

    ``name`` (a digest or file name) is used in error messages. ``max_bytes=None`` means no cap.
    Call :meth:`drain` after the tar's last member so :attr:`diff_id` covers the whole stream
    (tar padding and trailing zero blocks included, as Docker and containerd hash it).
    """

    def __init__(self, source: BinaryIO, *, name: str, max_bytes: int | None) -> None:
        self.name = name
        self._src = source
        self._max = max_bytes
        self._hash = hashlib.sha256()
        self.size = 0  # decompressed bytes produced so far
        self._buf = b""
        self._pos = 0
        self._src_eof = False
        first = self._read_source()
        self.compression = sniff(first)
        self._dec: _Decoder
        if self.compression is Compression.GZIP:
            self._dec = _GzipDecoder(name)
        elif self.compression is Compression.ZSTD:
            self._dec = _ZstdDecoder(name)
        else:
            self._dec = _Plain()
        self._first: bytes | None = first
        self._queue: queue.Queue[bytes | BaseException] | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._done = False

    def _read_source(self) -> bytes:
        data = self._src.read(_IN_CHUNK)
        if not data:
            self._src_eof = True
            return b""
        return bytes(data)

    def _produce(self) -> bytes:
        """The next decompressed chunk; b"" at the end of the stream."""
        while True:
            if self._first is not None:
                data, self._first = self._first, None
            elif self._dec.pending():
                data = b""
            elif self._src_eof:
                self._dec.finish()
                return b""
            else:
                data = self._read_source()
                if not data:
                    self._dec.finish()
                    return b""
            out = self._dec.feed(data)
            if out:
                self.size += len(out)
                if self._max is not None and self.size > self._max:
                    raise InvalidArgument(
                        f"layer {self.name} decompresses to more than {self._max} bytes "
                        f"(the cap on one layer's uncompressed size)",
                        hint=f"if the layer is genuine, raise the cap: set {MAX_BYTES_ENV} "
                        "to a larger byte count (or pass a larger max_bytes)",
                    )
                self._hash.update(out)
                return out

    # -- read-ahead on a thread ---------------------------------------------------------------

    def start_readahead(self, depth: int = 4) -> None:
        """Decompress and hash on a background thread, ``depth`` chunks ahead of the reader.

        zlib, zstd and sha256 release the GIL on big buffers, so inflating overlaps the
        caller's file creation. Call :meth:`close` when done (also on errors) so the thread
        does not linger.
        """
        if self._queue is not None:
            return
        self._queue = queue.Queue(depth)
        self._thread = threading.Thread(target=self._pump, name="layer-readahead", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        assert self._queue is not None
        while not self._stop.is_set():
            item: bytes | BaseException
            try:
                item = self._produce()
            except BaseException as err:  # handed to the reader, raised there
                item = err
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if not isinstance(item, bytes) or not item:
                return

    def _next(self) -> bytes:
        if self._queue is None:
            return self._produce()
        if self._done:
            return b""
        item = self._queue.get()
        if isinstance(item, BaseException):
            self._done = True
            raise item
        if not item:
            self._done = True
        return item

    def close(self) -> None:
        """Stop the read-ahead thread (if any). The source stream is the caller's to close."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def read(self, n: int = -1) -> bytes:
        """Up to ``n`` decompressed bytes (all remaining when ``n < 0``); b"" at the end."""
        if n is None or n < 0:
            parts = [self._buf[self._pos :]]
            self._buf, self._pos = b"", 0
            while chunk := self._next():
                parts.append(chunk)
            return b"".join(parts)
        if self._pos >= len(self._buf):
            self._buf = self._next()
            self._pos = 0
            if not self._buf:
                return b""
        end = self._pos + n
        out = self._buf[self._pos : end]
        self._pos = min(end, len(self._buf))
        return out

    def next_chunk(self) -> bytes:
        """The next piece of decompressed bytes, whatever its size; b"" at the end."""
        if self._pos < len(self._buf):
            out = self._buf[self._pos :] if self._pos else self._buf
            self._buf, self._pos = b"", 0
            return out
        return self._next()

    def drain(self) -> None:
        """Read (and hash) everything left, discarding it."""
        self._buf, self._pos = b"", 0
        while self._next():
            pass

    @property
    def diff_id(self) -> str:
        """``sha256:<hex>`` of the decompressed bytes produced so far."""
        return "sha256:" + self._hash.hexdigest()
