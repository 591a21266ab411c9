"""Remote Asset API: Fetch and Push over each store's asset index (``store/assets.py``).

Fetch answers only what was pushed, or, for FetchBlob with a ``checksum.sri`` qualifier,
a blob of that hash already in the CAS (the offline mirror); it never downloads from
origin. A pushed asset answers a Fetch that asks for some or all of its qualifiers. An
answer's blob, and every reference pushed with it, is in the CAS at the time of the
answer: an asset whose blob was evicted is NOT_FOUND, never a digest that fails to read.

Statuses: a malformed URI, qualifier or digest, or a qualifier this server does not know,
is INVALID_ARGUMENT (the call fails); nothing matching is NOT_FOUND in the response's
``status``, as the API puts errors about the asset itself. Push of a blob the CAS does not
hold is FAILED_PRECONDITION: a client must upload first.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from casfs._proto import remote_asset_pb2 as ra_pb2
from casfs._proto import remote_asset_pb2_grpc as ra_grpc
from casfs._proto import remote_execution_pb2 as re_pb2
from casfs._proto import status_pb2
from casfs.assetnames import (
    CHECKSUM_SRI,
    MAX_REFERENCES,
    RESOURCE_TYPE,
    AssetNameError,
    check_qualifiers,
    check_uris,
    sri_hashes,
)
from casfs.digest import Digest, DigestFunction
from casfs.server.cas import digest_function, to_digest
from casfs.server.grpc_errors import RequestError, grpc_errors
from casfs.server.instances import Instance, Instances
from casfs.store.assets import Asset, AssetIndex, AssetKind
from casfs.store.blobstore import BlobStore

# Qualifiers that only shape a download from origin, which this server never makes: they
# are accepted and do not take part in matching.
_ORIGIN_ONLY_PREFIXES = ("http_header:", "http_header_url:")
# Qualifiers understood without any push carrying them.
_UNDERSTOOD = frozenset({CHECKSUM_SRI, RESOURCE_TYPE, "bazel.canonical_id"})


def _invalid(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, message)


def _seconds(stamp: Timestamp) -> float:
    return stamp.seconds + stamp.nanos / 1e9


def _timestamp(seconds: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def _request_names(
    uris: Sequence[str], pairs: Iterable[ra_pb2.Qualifier]
) -> tuple[list[str], dict[str, str]]:
    try:
        return check_uris(uris), check_qualifiers((q.name, q.value) for q in pairs)
    except AssetNameError as error:
        raise _invalid(str(error)) from None


def _requested_function(value: int) -> DigestFunction | None:
    """The request's digest function; None when unset (the API's default is sha256)."""
    return digest_function(value, "") if value else None


def _references(
    blobs: Iterable[re_pb2.Digest], directories: Iterable[re_pb2.Digest], function: DigestFunction
) -> list[Digest]:
    protos = [*blobs, *directories]
    if len(protos) > MAX_REFERENCES:
        raise _invalid(f"{len(protos)} references; the limit is {MAX_REFERENCES}")
    return [Digest.from_proto(p, function) for p in protos]


def _stored_by_hash(blobs: BlobStore, function: DigestFunction, hash_: str) -> Digest | None:
    """The digest of the stored blob whose hash is ``hash_``, if the CAS holds it."""
    empty = Digest.empty(function)
    if hash_ == empty.hash:
        return empty
    try:
        size = blobs.path(Digest(hash_, 0, function)).stat().st_size
    except FileNotFoundError:
        return None
    digest = Digest(hash_, size, function)
    return digest if blobs.contains(digest) else None


class AssetServicer(ra_grpc.FetchServicer, ra_grpc.PushServicer):
    """Fetch and Push for every served instance; instances on one store share its index."""

    def __init__(self, instances: Instances) -> None:
        self.instances = instances
        self._lock = threading.Lock()
        self._indexes: dict[Path, AssetIndex] = {}

    def _index(self, instance: Instance) -> AssetIndex:
        """The store's index, opened on first use (so a server nobody asks has no file)."""
        root = instance.blobs.root
        with self._lock:
            index = self._indexes.get(root)
            if index is None:
                index = self._indexes[root] = AssetIndex(root, fsync=instance.blobs.fsync)
            return index

    # -- Fetch --------------------------------------------------------------------------------

    def _matching(
        self,
        instance: Instance,
        kind: AssetKind,
        uris: list[str],
        qualifiers: dict[str, str],
        request: ra_pb2.FetchBlobRequest | ra_pb2.FetchDirectoryRequest,
        function: DigestFunction | None,
    ) -> Asset | None:
        """The newest pushed asset that matches and whose content is all in the CAS.

        Raises INVALID_ARGUMENT for a qualifier that is neither understood nor ever pushed.
        """
        index = self._index(instance)
        wanted = {
            name: value
            for name, value in qualifiers.items()
            if not name.startswith(_ORIGIN_ONLY_PREFIXES)
        }
        unknown = set(wanted) - _UNDERSTOOD
        unsupported = unknown - index.known_qualifiers(sorted(unknown)) if unknown else set()
        if unsupported:
            names = ", ".join(f'"{name}"' for name in sorted(unsupported))
            raise _invalid(f"qualifiers.name: {names} not supported")
        oldest = (
            _seconds(request.oldest_content_accepted)
            if request.HasField("oldest_content_accepted")
            else None
        )
        for asset in index.candidates(kind, uris, wanted, oldest=oldest):
            if function is not None and asset.digest.function is not function:
                continue
            if not instance.blobs.missing([asset.digest, *asset.references]):
                return asset
        return None

    def FetchBlob(
        self, request: ra_pb2.FetchBlobRequest, context: grpc.ServicerContext
    ) -> ra_pb2.FetchBlobResponse:
        """A pushed blob, else one in the CAS whose hash the ``checksum.sri`` names."""
        with grpc_errors(context, "FetchBlob"):
            instance = self.instances.get(request.instance_name)
            uris, qualifiers = _request_names(request.uris, request.qualifiers)
            function = _requested_function(request.digest_function)
            asset = self._matching(instance, AssetKind.BLOB, uris, qualifiers, request, function)
            if asset is not None:
                return ra_pb2.FetchBlobResponse(
                    status=status_pb2.Status(code=0),
                    uri=asset.uri,
                    qualifiers=_qualifiers(asset.qualifiers),
                    expires_at=_timestamp(asset.expire_at) if asset.expire_at else None,
                    blob_digest=asset.digest.to_proto(),
                    digest_function=asset.digest.function.name,
                )
            if CHECKSUM_SRI in qualifiers:
                digest = self._by_checksum(instance, qualifiers[CHECKSUM_SRI], function)
                if digest is not None:
                    return ra_pb2.FetchBlobResponse(
                        status=status_pb2.Status(code=0),
                        uri=uris[0],
                        qualifiers=_qualifiers(qualifiers),
                        blob_digest=digest.to_proto(),
                        digest_function=digest.function.name,
                    )
            return ra_pb2.FetchBlobResponse(
                status=_not_found(uris, qualifiers),
                uri=uris[0],
                digest_function=(function or DigestFunction.SHA256).name,
            )

    def _by_checksum(
        self, instance: Instance, sri: str, requested: DigestFunction | None
    ) -> Digest | None:
        """The blob of the CAS that one of the SRI's hashes names (the offline mirror)."""
        try:
            hashes = sri_hashes(sri)
        except AssetNameError as error:
            raise _invalid(str(error)) from None
        for function, hash_ in hashes:
            if requested is not None and requested is not function:
                raise _invalid(
                    f"digest_function {requested.name_lower} is not the checksum.sri's "
                    f"{function.name_lower}"
                )
            digest = _stored_by_hash(instance.blobs, function, hash_)
            if digest is not None:
                return digest
        return None

    def FetchDirectory(
        self, request: ra_pb2.FetchDirectoryRequest, context: grpc.ServicerContext
    ) -> ra_pb2.FetchDirectoryResponse:
        """A pushed tree whose root Directory (and pushed references) the CAS holds."""
        with grpc_errors(context, "FetchDirectory"):
            instance = self.instances.get(request.instance_name)
            uris, qualifiers = _request_names(request.uris, request.qualifiers)
            function = _requested_function(request.digest_function)
            asset = self._matching(
                instance, AssetKind.DIRECTORY, uris, qualifiers, request, function
            )
            if asset is None:
                return ra_pb2.FetchDirectoryResponse(
                    status=_not_found(uris, qualifiers),
                    uri=uris[0],
                    digest_function=(function or DigestFunction.SHA256).name,
                )
            return ra_pb2.FetchDirectoryResponse(
                status=status_pb2.Status(code=0),
                uri=asset.uri,
                qualifiers=_qualifiers(asset.qualifiers),
                expires_at=_timestamp(asset.expire_at) if asset.expire_at else None,
                root_directory_digest=asset.digest.to_proto(),
                digest_function=asset.digest.function.name,
            )

    # -- Push ---------------------------------------------------------------------------------

    def _push(
        self,
        kind: AssetKind,
        request: ra_pb2.PushBlobRequest | ra_pb2.PushDirectoryRequest,
        proto_digest: re_pb2.Digest,
    ) -> None:
        instance = self.instances.get(request.instance_name)
        uris, qualifiers = _request_names(request.uris, request.qualifiers)
        digest = to_digest(proto_digest, request.digest_function)
        if CHECKSUM_SRI in qualifiers:
            try:
                hashes = sri_hashes(qualifiers[CHECKSUM_SRI])
            except AssetNameError as error:
                raise _invalid(str(error)) from None
            if all(f is digest.function and h != digest.hash for f, h in hashes):
                raise _invalid(f"checksum.sri does not match the pushed digest {digest}")
        references = _references(
            request.references_blobs, request.references_directories, digest.function
        )
        missing = instance.blobs.missing([digest, *references])
        if missing:
            raise RequestError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"{len(missing)} of the pushed digests are not in the CAS (first: {missing[0]});"
                " upload them before pushing",
            )
        expire_at = _seconds(request.expire_at) if request.HasField("expire_at") else None
        self._index(instance).push(
            kind, uris, qualifiers, digest, references=references, expire_at=expire_at
        )

    def PushBlob(
        self, request: ra_pb2.PushBlobRequest, context: grpc.ServicerContext
    ) -> ra_pb2.PushBlobResponse:
        """Name a blob the CAS holds by every URI with the qualifiers, all in one step."""
        with grpc_errors(context, "PushBlob"):
            self._push(AssetKind.BLOB, request, request.blob_digest)
            return ra_pb2.PushBlobResponse()

    def PushDirectory(
        self, request: ra_pb2.PushDirectoryRequest, context: grpc.ServicerContext
    ) -> ra_pb2.PushDirectoryResponse:
        """Name a tree whose root Directory the CAS holds, as PushBlob does a blob."""
        with grpc_errors(context, "PushDirectory"):
            self._push(AssetKind.DIRECTORY, request, request.root_directory_digest)
            return ra_pb2.PushDirectoryResponse()


def _qualifiers(qualifiers: Mapping[str, str]) -> list[ra_pb2.Qualifier]:
    return [ra_pb2.Qualifier(name=n, value=v) for n, v in sorted(qualifiers.items())]


def _not_found(uris: Sequence[str], qualifiers: Mapping[str, str]) -> status_pb2.Status:
    names = f" with qualifiers {sorted(qualifiers)}" if qualifiers else ""
    return status_pb2.Status(
        code=grpc.StatusCode.NOT_FOUND.value[0],
        message=f"no asset for {list(uris)!r}{names} whose content is in the CAS",
    )
