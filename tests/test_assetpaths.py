"""URIs as names below ``assets/`` and back (``fs/assetpaths.py``): no I/O."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from casfs.assetnames import AssetNameError, check_uri
from casfs.fs.assetpaths import AssetPrefix, child_name, scheme_prefix, split


@pytest.mark.parametrize(
    ("uri", "path"),
    [
        ("https://example.com/dist/tool-1.2.tar.gz", "https/example.com/dist/tool-1.2.tar.gz"),
        ("urn:casfs:report:42", "urn:/casfs:report:42"),
        ("file:///srv/x", "file/%/srv/x"),
        ("https://h/dir/", "https/h/dir/%"),
        ("https://h/a%20b?q=1", "https/h/a%20b?q=1"),
    ],
)
def test_uris_as_paths(uri: str, path: str) -> None:
    top, names = split(uri) or ("", [])
    assert "/".join([top, *names]) == path
    assert _walk(path) == uri


@pytest.mark.parametrize(
    "uri",
    [
        "https://h/x?/../etc",  # '..' in the query
        "https://../x",  # '..' as the host
        "https://h/%2E%2e/x",
        "https://h/%/x",  # a piece that is the empty piece's name
        "https://h/" + "a" * 256,
    ],
)
def test_uris_that_cannot_be_shown(uri: str) -> None:
    assert split(uri) is None
    assert child_name(AssetPrefix("https://"), uri) is None


@pytest.mark.parametrize("uri", ["https://[", "https://h]/x", "s3://[a/b"])
def test_an_unmatched_bracket_in_the_authority_is_no_uri(uri: str) -> None:
    """urllib cannot split such an authority: refused as any other bad URI, never a
    ValueError of urllib's (which a lookup of ``assets/https/[`` would have raised)."""
    with pytest.raises(AssetNameError):
        check_uri(uri)
    top, _, host = uri.partition("://")
    assert AssetPrefix(f"{top}://").child_uri(host.partition("/")[0]) is None


@pytest.mark.parametrize("name", [".", "..", "%2e", "%2E%2E", "a" * 256])
def test_names_that_stand_for_no_uri(name: str) -> None:
    assert AssetPrefix("https://h/").child_uri(name) is None
    assert AssetPrefix("https://h/").child(name) is None


def _walk(path: str) -> str | None:
    """The URI a path below assets/ names, as the mount's lookups find it."""
    top, *names = path.split("/")
    prefix = scheme_prefix(top)
    for name in names[:-1]:
        prefix = prefix.child(name) if prefix is not None else None
    return prefix.child_uri(names[-1]) if prefix is not None else None


PIECE = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc", "Zs"), blacklist_characters="/"),
    max_size=12,
)


@settings(max_examples=60, deadline=None)
@given(
    scheme=st.sampled_from(["https", "urn", "s3", "git+ssh"]),
    opaque=st.booleans(),
    pieces=st.lists(PIECE, min_size=1, max_size=5),
)
def test_every_shown_uri_walks_back_to_itself(scheme: str, opaque: bool, pieces: list[str]) -> None:
    """A URI that can be shown is named by exactly its path; one that cannot never is."""
    uri = f"{scheme}:{'' if opaque else '//'}{'/'.join(pieces)}"
    try:
        check_uri(uri)
    except AssetNameError:
        return
    shown = split(uri)
    if shown is None:
        return
    top, names = shown
    assert all(name not in (".", "..", "") and "/" not in name for name in names)
    assert _walk("/".join([top, *names])) == uri
