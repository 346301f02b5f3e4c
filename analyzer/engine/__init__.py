"""The engine stage: packets in, timelines and events out (engine.py), with its runs (runs.py), its
quick path (quick.py) and the loops that feed it capture files (files.py)."""
from analyzer.engine.engine import DEFAULT_PORTS, Engine, EventObserver, Observer
from analyzer.engine.files import PROGRESS_EVERY, ProgressCallback, analyze_timelines, iter_events, iter_frames
from analyzer.engine.runs import FrameColumns, PacketRun, SegmentColumns

__all__ = ["DEFAULT_PORTS", "PROGRESS_EVERY", "Engine", "EventObserver", "FrameColumns", "Observer", "PacketRun",
           "ProgressCallback", "SegmentColumns", "analyze_timelines", "iter_events", "iter_frames"]
