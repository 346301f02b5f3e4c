"""amqp-hb: explain AMQP 0-9-1 heartbeat timeouts and connection teardowns from packet captures."""

__version__ = "0.1.0"

from analyzer.api import FileAnalysis, FrameRecord, analyze_file, read_frames
from analyzer.notebook import load  # pandas is imported only when load() runs

__all__ = ["FileAnalysis", "FrameRecord", "__version__", "analyze_file", "load", "read_frames"]
