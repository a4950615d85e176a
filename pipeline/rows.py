"""The one row shape that flows from the executors (parse, link, score) to the driver's sink.

Executors turn Kafka records into rows of :data:`PROCESSED_DDL` (``mapInPandas``); the driver
collects a micro-batch of them once (Arrow) and the sink writes it to Postgres in one
transaction. Each Kafka record yields exactly one row, so "rows out = records in" is an
invariant the job checks and the tests assert.

``row_type`` says which columns are filled:

- ``document``: a valid document with its score (``document`` columns + ``score`` columns +
  ``entities``); ``model_version`` is always set, probabilities are never NaN, except for a document of
  ``score_status`` ``unsupported_language``: stored, not scored (sentiment and probabilities NULL).
- ``dead_letter``: a record the pipeline rejected (stage ``contract`` or ``scoring``) or a dead
  letter that ingest published to the dead-letter topic (stage from its envelope, ``ingest`` or
  ``replay``); the ``dl_*`` columns and ``raw_payload`` are set, document columns may be NULL.

Timestamps are UTC (the job runs Spark with ``spark.sql.session.timeZone=UTC``).
"""

from __future__ import annotations

ROW_DOCUMENT = "document"
ROW_DEAD_LETTER = "dead_letter"

ENTITY_DDL = (
    "struct<entity:string, entity_type:string, linked_by:string, mention:string, model_version:string, "
    "sentiment:string, confidence:float, p_negative:float, p_neutral:float, p_positive:float>"
)

# (name, Spark type) in the order of the pandas frame that mapInPandas returns.
PROCESSED_FIELDS: list[tuple[str, str]] = [
    ("row_type", "string"),
    # where the record came from (every row)
    ("kafka_topic", "string"), ("kafka_partition", "int"), ("kafka_offset", "long"), ("kafka_timestamp", "timestamp"),
    # the document (row_type = document)
    ("id", "string"), ("schema_version", "int"), ("source", "string"), ("kind", "string"), ("url", "string"),
    ("title", "string"), ("text", "string"), ("author", "string"), ("published_at", "timestamp"),
    ("fetched_at", "timestamp"), ("lang", "string"), ("tickers", "array<string>"), ("parent_id", "string"),
    ("extra", "string"),  # the JSON object as text
    ("novelty", "boolean"), ("first_story_id", "string"),
    # its score (row_type = document)
    ("model_version", "string"), ("sentiment", "string"), ("p_negative", "float"), ("p_neutral", "float"),
    ("p_positive", "float"), ("topic", "string"), ("topic_confidence", "float"), ("n_chunks", "int"),
    ("truncated", "boolean"), ("entities", f"array<{ENTITY_DDL}>"),
    ("evidence", "string"),  # JSON [{"word", "weight"}, ...]: the words that pushed the document's sentiment
    # "ok", or "unsupported_language" (the model does not read the document's language: no sentiment, no
    # probabilities, no window; detected_lang says which language), see pipeline.language
    ("score_status", "string"), ("detected_lang", "string"),
    # the dead letter (row_type = dead_letter)
    ("dl_stage", "string"), ("dl_reason", "string"), ("dl_detail", "string"), ("dl_source", "string"),
    ("dl_url", "string"), ("dl_rejected_at", "timestamp"), ("raw_payload", "binary"), ("raw_key", "binary"),
]
PROCESSED_COLUMNS = [name for name, _ in PROCESSED_FIELDS]
# Spark DDL for mapInPandas' output schema.
PROCESSED_DDL = ", ".join(f"{name} {kind}" for name, kind in PROCESSED_FIELDS)


def blank_row(**values) -> dict:
    """A processed row as a dict: every column None except ``values`` (unknown names are an error)."""
    unknown = set(values) - set(PROCESSED_COLUMNS)
    if unknown:
        raise KeyError(f"not processed-row columns: {sorted(unknown)}")
    row = dict.fromkeys(PROCESSED_COLUMNS)
    row.update(values)
    return row


def arrow_schema():
    """:data:`PROCESSED_FIELDS` as a pyarrow schema (timestamps in UTC), to check frames without Spark."""
    import pyarrow as pa

    scalar = {"string": pa.string(), "int": pa.int32(), "long": pa.int64(), "timestamp": pa.timestamp("us", tz="UTC"),
              "boolean": pa.bool_(), "float": pa.float32(), "binary": pa.binary(),
              "array<string>": pa.list_(pa.string())}
    entity = pa.struct([
        ("entity", pa.string()), ("entity_type", pa.string()), ("linked_by", pa.string()), ("mention", pa.string()),
        ("model_version", pa.string()), ("sentiment", pa.string()), ("confidence", pa.float32()),
        ("p_negative", pa.float32()), ("p_neutral", pa.float32()), ("p_positive", pa.float32()),
    ])
    fields = []
    for name, kind in PROCESSED_FIELDS:
        fields.append(pa.field(name, pa.list_(entity) if name == "entities" else scalar[kind]))
    return pa.schema(fields)
