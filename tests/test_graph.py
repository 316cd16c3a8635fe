"""gpunet.graph.StepGraph's sequence without a GPU: a stand-in for CuPy's streams, pools and
graphs records what the step graph asks for (the real thing runs in tests/test_step.py's GPU
cases, through TrainStep and PackedTrainStep)."""

from __future__ import annotations

from types import SimpleNamespace

from gpunet.graph import StepGraph


class Log(list):
    pass


def fake_backend(log: Log):
    class Event:
        pass

    class Graph:
        def launch(self, stream):
            log.append(("launch", stream.name))

    class Stream:
        def __init__(self, non_blocking=False, name="capture"):
            self.name = name
            self.capturing = False

        def __enter__(self):
            log.append(("enter", self.name))
            return self

        def __exit__(self, *exc):
            log.append(("exit", self.name))

        def record(self):
            log.append(("record", self.name))
            return Event()

        def wait_event(self, event):
            log.append(("wait", self.name))

        def begin_capture(self, mode=None):
            log.append(("begin_capture", mode))
            self.capturing = True

        def end_capture(self):
            log.append(("end_capture",))
            self.capturing = False
            return Graph()

        def synchronize(self):
            log.append(("sync", self.name))

    class Pool:
        def malloc(self, n):  # pragma: no cover - the stand-in allocates nothing
            raise AssertionError

    class Using:
        def __init__(self, malloc):
            log.append(("pool",))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

    caller = Stream(name="caller")
    cuda = SimpleNamespace(Stream=Stream, MemoryPool=Pool, using_allocator=Using,
                           get_current_stream=lambda: caller,
                           runtime=SimpleNamespace(streamCaptureModeRelaxed=2))
    return SimpleNamespace(xp=SimpleNamespace(cuda=cuda),
                           synchronize=lambda: log.append(("device_sync",)))


def test_warm_up_then_record_then_replay():
    log = Log()
    g = StepGraph(fake_backend(log))
    bodies, kept = [], []

    def body():
        bodies.append(g.stream is not None and g.stream.capturing)

    def keep():
        kept.append(len(bodies))
        return [f"buffers@{len(bodies)}"]

    # before any capture stream, host work runs at once, unordered
    assert g.on_stream(lambda: 7) == 7 and log == []
    assert g.run(body, keep) is False            # warm-up: eager, nothing recorded
    assert bodies == [False] and g.graph is None and log == []
    assert g.run(body, keep) is True             # recorded (body not run eagerly), replayed
    assert bodies == [False, True]
    assert kept == [1, 2] and g._keep == ["buffers@1", "buffers@2"]
    assert ("begin_capture", 2) in log and ("end_capture",) in log
    assert log.index(("device_sync",)) < log.index(("begin_capture", 2))
    assert log[-1] == ("wait", "caller") and ("launch", "capture") in log
    n = len(log)
    assert g.run(body, keep) is True             # a replay: one launch, no body, no capture
    assert bodies == [False, True]
    assert [e for e in log[n:] if e[0] in ("launch", "begin_capture")] == [("launch", "capture")]
    # host work is now ordered on the capture stream between the caller's work
    log.clear()
    assert g.on_stream(lambda: 3) == 3
    assert log == [("record", "caller"), ("wait", "capture"), ("enter", "capture"),
                   ("exit", "capture"), ("record", "capture"), ("wait", "caller")]
    g.synchronize()
    assert log[-1] == ("sync", "capture")
