"""Spike detection and alert delivery (email, signed webhooks) over the trend windows in Postgres."""
