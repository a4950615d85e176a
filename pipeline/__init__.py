"""The Spark Structured Streaming job (Kafka -> models.Scorer -> Postgres). Not built yet."""
