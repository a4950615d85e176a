"""``python -m pipeline run ...``: what ``finpulse pipeline start`` runs in the background."""

from finpulse.cli import setup_logging
from pipeline.cli import cli

if __name__ == "__main__":
    setup_logging()
    cli(prog_name="finpulse pipeline")
