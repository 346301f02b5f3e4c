"""TLS between the TCP streams and the AMQP frames: records, handshake facts, and (with keys) plaintext.

Sans-IO like amqp/: fed reassembled stream bytes and times, returns events. Key material comes in as
bytes (a key log's text, a pcapng Decryption Secrets Block); reading files is the edges' job.
"""
