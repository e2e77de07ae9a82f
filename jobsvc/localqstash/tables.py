"""The local QStash server's tables. Times are unix milliseconds, as on the QStash wire."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()
# 64-bit sequence numbers; SQLite only autoincrements a column declared INTEGER.
Seq = BigInteger().with_variant(Integer(), "sqlite")

# Every message ever accepted, until retention removes it after it ended. ``data`` holds the
# delivery configuration (headers, callbacks, retry settings); the columns are what is filtered on.
messages = Table(
    "qstash_messages",
    metadata,
    Column("message_id", String(64), primary_key=True),
    Column("user_id", String(64), nullable=False),
    Column("state", String(16), nullable=False),
    Column("url", Text, nullable=False),
    Column("due_at", BigInteger, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Column("retried", Integer, nullable=False, default=0),
    Column("queue_name", String(256)),
    Column("topic_name", String(256)),
    Column("schedule_id", String(256)),
    Column("flow_control_key", String(256)),
    Column("label", String(256)),
    Column("caller_ip", String(64)),
    Column("body", LargeBinary, nullable=False),
    Column("data", JSON, nullable=False),
)
Index("qstash_messages_state_idx", messages.c.state, messages.c.updated_at)

schedules = Table(
    "qstash_schedules",
    metadata,
    Column("schedule_id", String(256), primary_key=True),
    Column("user_id", String(64), nullable=False),
    Column("cron", String(256), nullable=False),
    Column("destination", Text, nullable=False),
    Column("paused", Boolean, nullable=False, default=False),
    Column("created_at", BigInteger, nullable=False),
    Column("last_schedule_time", BigInteger),
    Column("last_states", JSON, nullable=False),
    Column("body", LargeBinary, nullable=False),
    Column("data", JSON, nullable=False),
)

dlq = Table(
    "qstash_dlq",
    metadata,
    Column("seq", Seq, primary_key=True, autoincrement=True),
    Column("dlq_id", String(64), nullable=False, unique=True),
    Column("user_id", String(64), nullable=False),
    Column("message_id", String(64), nullable=False),
    Column("url", Text, nullable=False),
    Column("topic_name", String(256)),
    Column("queue_name", String(256)),
    Column("schedule_id", String(256)),
    Column("flow_control_key", String(256)),
    Column("label", String(256)),
    Column("caller_ip", String(64)),
    Column("created_at", BigInteger, nullable=False),
    Column("response_status", Integer, nullable=False),
    Column("body", LargeBinary, nullable=False),
    Column("data", JSON, nullable=False),
)

events = Table(
    "qstash_events",
    metadata,
    Column("seq", Seq, primary_key=True, autoincrement=True),
    Column("user_id", String(64), nullable=False),
    Column("time", BigInteger, nullable=False),
    Column("message_id", String(64), nullable=False),
    Column("state", String(24), nullable=False),
    Column("url", Text, nullable=False),
    Column("topic_name", String(256)),
    Column("queue_name", String(256)),
    Column("schedule_id", String(256)),
    Column("flow_control_key", String(256)),
    Column("label", String(256)),
    Column("caller_ip", String(64)),
    Column("data", JSON, nullable=False),
)
Index("qstash_events_user_seq_idx", events.c.user_id, events.c.seq)
Index("qstash_events_message_idx", events.c.message_id)

queues = Table(
    "qstash_queues",
    metadata,
    Column("user_id", String(64), primary_key=True),
    Column("name", String(256), primary_key=True),
    Column("parallelism", Integer, nullable=False),
    Column("paused", Boolean, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
)

topics = Table(
    "qstash_topics",
    metadata,
    Column("user_id", String(64), primary_key=True),
    Column("name", String(256), primary_key=True),
    Column("endpoints", JSON, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
)

signing_keys = Table(
    "qstash_signing_keys",
    metadata,
    Column("user_id", String(64), primary_key=True),
    Column("current", String(64), nullable=False),
    Column("next", String(64), nullable=False),
)

deduplication = Table(
    "qstash_deduplication",
    metadata,
    Column("user_id", String(64), primary_key=True),
    Column("dedup_key", String(128), primary_key=True),
    Column("message_id", String(64), nullable=False),
    Column("expires_at", BigInteger, nullable=False),
)

flow_controls = Table(
    "qstash_flow_controls",
    metadata,
    Column("user_id", String(64), primary_key=True),
    Column("flow_control_key", String(256), primary_key=True),
    Column("paused", Boolean, nullable=False),
    Column("pinned_parallelism", Integer),
    Column("pinned_rate", Integer),
    Column("pinned_period", Integer),
)
