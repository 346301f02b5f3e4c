"""amqp-hb: explain AMQP 0-9-1 heartbeat timeouts and connection teardowns from packet captures."""

__version__ = "0.1.0"

from analyzer.api import FileAnalysis, FrameRecord, analyze_file, read_frames  # noqa: E402
from analyzer.notebook import load  # noqa: E402  (pandas is imported only when load() runs)

__all__ = ["FileAnalysis", "FrameRecord", "analyze_file", "load", "read_frames", "__version__"]
