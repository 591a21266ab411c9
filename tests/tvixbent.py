"""A tvix castore BlobService in the test process, over blobs in memory, whose habits are
set per blob: chunked or not, honest or not. For what ``casfs serve`` never does (it
lists one chunk and sends the right bytes). Not a fault a real server could not have:
each habit is one a real server may show.

``BentDirectories`` is a DirectoryService that sends whatever Directory it was given
under a digest, checked or not (``casfs serve`` checks each before it stores or sends it):
a server with bad data, a bug, or an attacker behind it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field

import blake3
import grpc

from casfs import tvix_directory
from casfs._proto.tvix import castore_pb2, rpc_directory_pb2, rpc_directory_pb2_grpc
from casfs._proto.tvix import rpc_blobstore_pb2 as pb2
from casfs._proto.tvix import rpc_blobstore_pb2_grpc as pb2_grpc

MESSAGE = 256 << 10  # bytes per Read message


@dataclass
class Blob:
    data: bytes
    chunk: int = 0  # Stat lists chunks of this size (0: none)
    corrupt: bool = False  # Read sends the bytes with one flipped near the end (each chunk's)
    short: bool = False  # Read stops one message early (each chunk's)


@dataclass
class BentTvix(pb2_grpc.BlobServiceServicer):
    """Blobs by raw blake3 digest, and their chunks (readable by their own digests)."""

    blobs: dict[bytes, Blob] = field(default_factory=dict)
    put_mode: str = "ok"  # "ok", "cut" (abort after the first message), "lie" (wrong digest)
    reads: list[bytes] = field(default_factory=list)  # digests Read asked for, in order
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, data: bytes, **habits: object) -> bytes:
        """Store ``data`` (and its chunks, if ``chunk`` is given); returns its raw digest."""
        raw = blake3.blake3(data).digest()
        blob = Blob(data, **habits)  # type: ignore[arg-type]
        with self.lock:
            self.blobs[raw] = blob
            for start in range(0, len(data), blob.chunk or len(data) or 1):
                if blob.chunk:
                    part = data[start : start + blob.chunk]
                    self.blobs.setdefault(
                        blake3.blake3(part).digest(),
                        Blob(part, corrupt=blob.corrupt, short=blob.short),
                    )
        return raw

    def reads_of(self, raw: bytes) -> int:
        with self.lock:
            return self.reads.count(raw)

    def Stat(self, request: pb2.StatBlobRequest, context: grpc.ServicerContext) -> object:
        blob = self.blobs.get(request.digest)
        if blob is None:
            context.abort(grpc.StatusCode.NOT_FOUND, "no such blob")
        response = pb2.StatBlobResponse()
        if request.send_chunks and blob.chunk:
            for start in range(0, len(blob.data), blob.chunk):
                part = blob.data[start : start + blob.chunk]
                response.chunks.add(digest=blake3.blake3(part).digest(), size=len(part))
        return response

    def Read(self, request: pb2.ReadBlobRequest, context: grpc.ServicerContext) -> Iterator[object]:
        with self.lock:
            self.reads.append(request.digest)
        blob = self.blobs.get(request.digest)
        if blob is None:
            context.abort(grpc.StatusCode.NOT_FOUND, "no such blob")
        data = blob.data
        if blob.corrupt:
            data = data[:-10] + bytes([data[-10] ^ 1]) + data[-9:]
        pieces = [data[i : i + MESSAGE] for i in range(0, len(data), MESSAGE)]
        if blob.short:
            pieces = pieces[:-1]
        for piece in pieces:
            yield pb2.BlobChunk(data=piece)

    def Put(
        self, request_iterator: Iterator[pb2.BlobChunk], context: grpc.ServicerContext
    ) -> object:
        hasher = blake3.blake3()
        received = bytearray()
        for message in request_iterator:
            if self.put_mode == "cut":
                context.abort(grpc.StatusCode.UNAVAILABLE, "cut off")
            hasher.update(message.data)
            received += message.data
        if self.put_mode == "lie":
            return pb2.PutBlobResponse(digest=bytes(32))
        self.add(bytes(received))
        return pb2.PutBlobResponse(digest=hasher.digest())


@dataclass
class BentDirectories(rpc_directory_pb2_grpc.DirectoryServiceServicer):
    """Directories by the raw digest they are served under (their own, or not)."""

    directories: dict[bytes, castore_pb2.Directory] = field(default_factory=dict)
    gets: list[tuple[bytes, bool]] = field(default_factory=list)  # Gets answered in full
    puts: list[int] = field(default_factory=list)  # Directories in each Put stored
    received: int = 0  # Directory messages of every Put, stored or refused
    silent: set[bytes] = field(default_factory=set)  # digests whose Get sends nothing
    put_mode: str = "ok"  # "ok", "lie" (Put answers another root digest, storing nothing)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, directory: castore_pb2.Directory, digest: bytes | None = None) -> bytes:
        """Serve ``directory`` under ``digest`` (default: its own); returns the digest."""
        raw = digest or blake3.blake3(directory.SerializeToString(deterministic=True)).digest()
        self.directories[raw] = directory
        return raw

    def Get(self, request: object, context: grpc.ServicerContext) -> Iterator[object]:
        # Counted on arrival: a client that takes the one Directory it asked for ends the
        # call, and a generator cancelled at its yield would never count it afterwards.
        with self.lock:
            self.gets.append((request.digest, request.recursive))  # type: ignore[attr-defined]
        if request.digest in self.silent:  # type: ignore[attr-defined]
            return
        queue = [request.digest]  # type: ignore[attr-defined]
        seen = set(queue)
        while queue:
            directory = self.directories.get(queue.pop(0))
            if directory is None:
                context.abort(grpc.StatusCode.NOT_FOUND, "no such Directory")
            yield directory
            if not request.recursive:  # type: ignore[attr-defined]
                break
            for node in directory.directories:
                if node.digest not in seen:
                    seen.add(node.digest)
                    queue.append(node.digest)

    def Put(self, request_iterator: Iterator[object], context: grpc.ServicerContext) -> object:
        """Upstream tvix's rule (its LeavesToRootValidator): a Directory may refer only to
        Directories sent before it in the same stream, with their sizes; the last is the
        root. Nothing is stored unless the whole stream passes."""
        sizes: dict[bytes, int] = {}
        received: list[tuple[bytes, castore_pb2.Directory]] = []
        for directory in request_iterator:
            with self.lock:
                self.received += 1
            for node in directory.directories:  # type: ignore[attr-defined]
                if sizes.get(node.digest) != node.size:
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, "not sent before it")
            raw = blake3.blake3(directory.SerializeToString(deterministic=True)).digest()  # type: ignore[attr-defined]
            sizes[raw] = tvix_directory.size_of(directory)  # type: ignore[arg-type]
            received.append((raw, directory))  # type: ignore[arg-type]
        if not received:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "empty stream")
        if self.put_mode == "lie":
            return rpc_directory_pb2.PutDirectoryResponse(root_digest=bytes(32))
        for raw, directory in received:
            self.directories[raw] = directory
        with self.lock:
            self.puts.append(len(received))
        return rpc_directory_pb2.PutDirectoryResponse(root_digest=received[-1][0])

    def gets_of(self, raw: bytes) -> list[bool]:
        """Whether each Get of ``raw`` was recursive, in the order they arrived."""
        with self.lock:
            return [recursive for digest, recursive in self.gets if digest == raw]


def serve(
    servicer: BentTvix, directories: BentDirectories | None = None
) -> tuple[grpc.Server, int]:
    """Serve ``servicer`` (and ``directories``, if given) on 127.0.0.1; returns the server
    and its port."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=16),
        options=[("grpc.max_receive_message_length", 64 << 20)],
    )
    pb2_grpc.add_BlobServiceServicer_to_server(servicer, server)
    if directories is not None:
        rpc_directory_pb2_grpc.add_DirectoryServiceServicer_to_server(directories, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port
