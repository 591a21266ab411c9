"""The held call of ``cas/warmth.py`` keeps grpc's channel-spin thread alive between unary
calls, against a real ``casfs serve``, and ends by itself once the calls stop.

grpc runs a ``.future()``'s done callback on that spin thread, so the names of the threads
the callbacks ran on count the spin threads grpc started (each new thread has a new name).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import grpc
import pytest

from casfs._proto import remote_execution_pb2 as re_pb2
from casfs._proto import remote_execution_pb2_grpc as re_grpc
from casfs.cas.warmth import ChannelWarmth
from tests.servers import CasfsServer

CALLS = 40


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with CasfsServer(tmp_path_factory.mktemp("warmth") / "store") as server:
        yield f"127.0.0.1:{server.port}"


def _callback_threads(
    stub: re_grpc.ContentAddressableStorageStub, warmth: ChannelWarmth
) -> set[str]:
    """The threads that ran the done callbacks of CALLS unary calls made one after another."""
    names: set[str] = set()
    request = re_pb2.FindMissingBlobsRequest(instance_name="main")
    for _ in range(CALLS):
        warmth.touch()
        done = threading.Event()
        future = stub.FindMissingBlobs.future(request, timeout=10)

        def record(_: object, done: threading.Event = done) -> None:
            names.add(threading.current_thread().name)
            done.set()

        future.add_done_callback(record)
        assert done.wait(10)
        future.result()
    return names


def test_calls_in_a_row_share_one_spin_thread(target: str) -> None:
    with grpc.insecure_channel(target) as channel:
        stub = re_grpc.ContentAddressableStorageStub(channel)
        cold = _callback_threads(stub, ChannelWarmth(channel, linger=0))
        warmth = ChannelWarmth(channel, linger=5.0)
        warm = _callback_threads(stub, warmth)
    assert len(warm) <= 2, warm  # the spin thread of before the first hold, and its own
    assert len(cold) > CALLS // 4, cold  # without it, (nearly) a thread per call
    assert warmth.holds >= 1


def test_the_held_call_ends_by_itself(target: str) -> None:
    """Once the calls stop, the held call's deadline ends it and grpc's spin thread goes:
    the next call's callback runs on a new thread."""
    with grpc.insecure_channel(target) as channel:
        stub = re_grpc.ContentAddressableStorageStub(channel)
        warmth = ChannelWarmth(channel, linger=0.2)
        first = _callback_threads(stub, warmth)
        idle = ChannelWarmth(channel, linger=0)  # calls that hold nothing themselves
        deadline = time.monotonic() + 30
        while True:
            later = _callback_threads(stub, idle)
            if later - first:
                break
            assert time.monotonic() < deadline, "the held call never ended"
            time.sleep(0.05)  # polling until the deadline passes


def test_a_closed_channel_is_left_alone(target: str) -> None:
    channel = grpc.insecure_channel(target)
    warmth = ChannelWarmth(channel, linger=1.0)
    channel.close()
    warmth.touch()  # no exception, no call
    assert warmth.holds == 0
