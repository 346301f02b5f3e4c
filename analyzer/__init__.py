"""amqp-hb: explain AMQP 0-9-1 heartbeat timeouts and connection teardowns from packet captures."""

__version__ = "0.1.0"
