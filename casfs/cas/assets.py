"""An async Remote Asset client for trio (Fetch and Push of ``build.bazel.remote.asset.v1``).

It speaks to any Remote Asset server, casfs's own or another; the mount and ``casfs
asset`` share it. As in ``client.py``: calls never block a thread (grpc futures woken
through the trio token), a cancelled trio task cancels its call, every call has the
remote's deadline and retries on transient errors, and only ``CasError`` subclasses
leave this module. A server without the API raises :class:`NoAssetApi`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from casfs._proto import remote_asset_pb2 as ra_pb2
from casfs._proto import remote_asset_pb2_grpc as ra_grpc
from casfs.cas.calls import await_future
from casfs.cas.channel import call_metadata, open_channel
from casfs.cas.errors import CasError, Unimplemented, from_status
from casfs.cas.retry import with_retries
from casfs.config import RemoteConfig
from casfs.digest import Digest, DigestFunction
from casfs.rpcstats import RpcStats


class NoAssetApi(Unimplemented):
    """The server does not serve the Remote Asset API."""


@dataclass(frozen=True, slots=True)
class FetchedAsset:
    """What a Fetch answered: the URI that matched, the server's qualifiers, the digest."""

    uri: str
    digest: Digest
    qualifiers: Mapping[str, str] = field(default_factory=dict)
    expires_at: float | None = None


def _timestamp(seconds: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def _qualifiers(qualifiers: Mapping[str, str]) -> list[ra_pb2.Qualifier]:
    return [ra_pb2.Qualifier(name=n, value=v) for n, v in qualifiers.items()]


def _function(value: int) -> DigestFunction:
    """A response's digest function; unset (0) or unknown means sha256, as the API says."""
    try:
        return DigestFunction(value) if value else DigestFunction.SHA256
    except ValueError:
        return DigestFunction.SHA256


class AssetClient:
    """One Remote Asset endpoint and instance, used from trio.

    Create it inside ``trio.run`` and close it with ``aclose()`` or ``async with``.
    """

    def __init__(self, config: RemoteConfig, *, rpc_stats: RpcStats | None = None) -> None:
        self.config = config
        self.instance = config.instance
        self._metadata = call_metadata(config)
        self._channel = open_channel(config)
        if rpc_stats is not None:
            self._channel = rpc_stats.client_channel(self._channel)
        self._fetch = ra_grpc.FetchStub(self._channel)
        self._push = ra_grpc.PushStub(self._channel)

    async def __aenter__(self) -> AssetClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the channel; calls still running fail with CANCELLED."""
        self._channel.close()

    async def _call(self, method: Any, request: Any, what: str) -> Any:
        async def once() -> Any:
            future = method.future(
                request, timeout=self.config.rpc_timeout, metadata=self._metadata
            )
            return await await_future(future, what)

        try:
            return await with_retries(once, self.config.retry, what)
        except Unimplemented as error:
            raise NoAssetApi(
                f"{self.config.endpoint} does not serve the Remote Asset API "
                f"(build.bazel.remote.asset.v1): {error}",
                code=error.code,
            ) from None

    async def fetch_blob(
        self,
        uris: Sequence[str],
        qualifiers: Mapping[str, str] | None = None,
        *,
        oldest: float | None = None,
    ) -> FetchedAsset:
        """The blob the server names by any of ``uris`` with ``qualifiers``.

        Raises ``NotFound`` when nothing matches (whether the server says so in the call's
        status or in the response's), ``InvalidArgument`` for a qualifier it refuses.
        """
        request = ra_pb2.FetchBlobRequest(
            instance_name=self.instance, uris=uris, qualifiers=_qualifiers(qualifiers or {})
        )
        if oldest is not None:
            request.oldest_content_accepted.CopyFrom(_timestamp(oldest))
        what = f"FetchBlob {uris[0] if uris else ''!r}"
        response = await self._call(self._fetch.FetchBlob, request, what)
        return self._answer(response, response.blob_digest, what)

    async def fetch_directory(
        self,
        uris: Sequence[str],
        qualifiers: Mapping[str, str] | None = None,
        *,
        oldest: float | None = None,
    ) -> FetchedAsset:
        """The root Directory digest of the tree named so; errors as ``fetch_blob``."""
        request = ra_pb2.FetchDirectoryRequest(
            instance_name=self.instance, uris=uris, qualifiers=_qualifiers(qualifiers or {})
        )
        if oldest is not None:
            request.oldest_content_accepted.CopyFrom(_timestamp(oldest))
        what = f"FetchDirectory {uris[0] if uris else ''!r}"
        response = await self._call(self._fetch.FetchDirectory, request, what)
        return self._answer(response, response.root_directory_digest, what)

    @staticmethod
    def _answer(response: Any, digest: Any, what: str) -> FetchedAsset:
        error = from_status(response.status.code, response.status.message, what)
        if error is not None:
            raise error
        if not digest.hash:
            raise CasError(f"{what}: the server answered OK without a digest")
        return FetchedAsset(
            uri=response.uri,
            digest=Digest.from_proto(digest, _function(response.digest_function)),
            qualifiers={q.name: q.value for q in response.qualifiers},
            expires_at=(
                response.expires_at.ToNanoseconds() / 1e9
                if response.HasField("expires_at")
                else None
            ),
        )

    async def push_blob(
        self,
        uris: Sequence[str],
        digest: Digest,
        qualifiers: Mapping[str, str] | None = None,
        *,
        expire_at: float | None = None,
        references: Sequence[Digest] = (),
    ) -> None:
        """Name ``digest`` (already in the CAS) by ``uris`` with ``qualifiers``."""
        request = ra_pb2.PushBlobRequest(
            instance_name=self.instance,
            uris=uris,
            qualifiers=_qualifiers(qualifiers or {}),
            blob_digest=digest.to_proto(),
            references_blobs=[d.to_proto() for d in references],
            digest_function=digest.function.name,
        )
        if expire_at is not None:
            request.expire_at.CopyFrom(_timestamp(expire_at))
        await self._call(self._push.PushBlob, request, f"PushBlob {digest}")

    async def push_directory(
        self,
        uris: Sequence[str],
        root: Digest,
        qualifiers: Mapping[str, str] | None = None,
        *,
        expire_at: float | None = None,
    ) -> None:
        """Name the tree whose root Directory is ``root`` by ``uris`` with ``qualifiers``."""
        request = ra_pb2.PushDirectoryRequest(
            instance_name=self.instance,
            uris=uris,
            qualifiers=_qualifiers(qualifiers or {}),
            root_directory_digest=root.to_proto(),
            digest_function=root.function.name,
        )
        if expire_at is not None:
            request.expire_at.CopyFrom(_timestamp(expire_at))
        await self._call(self._push.PushDirectory, request, f"PushDirectory {root}")
