"""Spike detection and alert delivery (email, webhooks) on APScheduler. Not built yet."""
