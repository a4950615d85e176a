"""``finpulse ingest demo``: replay the bundled sample stream once, timestamps shifted to end now.

The sample is 5,000 stock-market tweets of 2020 (``ingest/demo/``, CC BY 4.0, see
``ingest/demo/ATTRIBUTION.md``). A marker under ``$FINPULSE_HOME/demo/`` makes the replay happen
once; it is written only after every record was acknowledged, so a failed replay runs again next
time, and the replay's ids are stable, so its documents upsert rather than double.
"""

from __future__ import annotations

import gzip
import shutil
from datetime import datetime, timezone
from pathlib import Path

import click

DEMO_DIR = Path(__file__).resolve().parent / "demo"
DEMO_FILE = DEMO_DIR / "stock_market_tweets_2020.csv.gz"
DEMO_SOURCE = "stock_market_tweets_2020"
DEMO_ROWS = 5000
# The sample's columns, as `finpulse ingest replay` options.
DEMO_REPLAY_OPTIONS = {"source": DEMO_SOURCE, "kind": "comment", "text_column": "text", "time_column": "created_at",
                       "id_column": "id", "ticker_column": "cashtags", "lang": "en", "shift_to_now": True,
                       "progress": False}


def demo_marker(home: Path) -> Path:
    return home / "demo" / f"{DEMO_SOURCE}.replayed"


def demo_csv(home: Path) -> Path:
    """The bundled sample, decompressed once under HOME (replay reads plain CSV)."""
    out = home / "demo" / DEMO_FILE.name.removesuffix(".gz")
    if not out.exists() or out.stat().st_mtime < DEMO_FILE.stat().st_mtime:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        with gzip.open(DEMO_FILE, "rb") as src, tmp.open("wb") as dst:
            shutil.copyfileobj(src, dst)
        tmp.replace(out)
    return out


@click.command("demo")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Replay only the first N rows (a quick check).")
@click.option("--force", is_flag=True, help="Replay even if the marker says it was replayed (ids are stable: nothing doubles).")
@click.pass_context
def demo_command(ctx: click.Context, limit: int | None, force: bool) -> None:
    """Replay the bundled sample stream once (5,000 tweets of 2020, CC BY 4.0), shifted to end now."""
    from finpulse.settings import get_settings
    from ingest.cli import replay_command

    settings = get_settings()
    marker = demo_marker(settings.home)
    if marker.exists() and not force:
        click.echo(f"sample stream already replayed ({marker}); not again (--force replays it)")
        return
    click.echo(f"replaying the sample stream {DEMO_FILE.name} ({limit or DEMO_ROWS} tweets, CC BY 4.0; see "
               "ingest/demo/ATTRIBUTION.md), timestamps shifted to end now ...")
    ctx.invoke(replay_command, file=demo_csv(settings.home), limit=limit, **DEMO_REPLAY_OPTIONS)
    # Only reached when every record was acknowledged (the replay raises or exits otherwise).
    marker.write_text(datetime.now(timezone.utc).isoformat() + "\n")
