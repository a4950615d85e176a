"""The analysts' dashboard and the mailed report: read Postgres through the finpulse_analyst role only."""
