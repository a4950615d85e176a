from pathlib import Path

from finpulse.settings import Settings, env_table


def test_every_setting_has_an_env_var_and_a_default(monkeypatch):
    monkeypatch.setenv("FINPULSE_KAFKA_BOOTSTRAP", "k1:9092, k2:9092")
    monkeypatch.setenv("FINPULSE_TOPIC_PARTITIONS", "6")
    monkeypatch.setenv("FINPULSE_HOME", "relative/state")
    monkeypatch.delenv("FINPULSE_CACHE_DIR")
    s = Settings()
    assert s.bootstrap_servers == ["k1:9092", "k2:9092"]
    assert not s.embedded_kafka
    assert s.topic_partitions == 6
    assert s.home.is_absolute() and s.home == Path.cwd() / "relative" / "state"
    assert s.cache == s.home / "cache"
    names = [row[0] for row in env_table()]
    assert "FINPULSE_DATABASE_URL" in names and "FINPULSE_HOME" in names
    assert all(desc for _, _, desc in env_table())


def test_database_url_is_a_secret(monkeypatch):
    monkeypatch.setenv("FINPULSE_DATABASE_URL", "postgresql+psycopg2://u:hunter2@db:5432/x")
    s = Settings()
    assert "hunter2" not in repr(s) and "hunter2" not in str(s.database_url)
    assert s.sqlalchemy_url().get_secret_value().endswith("@db:5432/x")
    assert not s.embedded_postgres


def test_embedded_database_url_needs_an_initialised_cluster(tmp_path, monkeypatch):
    monkeypatch.delenv("FINPULSE_DATABASE_URL", raising=False)
    s = Settings(home=tmp_path)
    try:
        s.sqlalchemy_url()
    except RuntimeError as exc:
        assert "finpulse stack up" in str(exc)
    else:
        raise AssertionError("expected a RuntimeError")
    s.postgres_password_file.parent.mkdir(parents=True)
    s.postgres_password_file.write_text("pw\n")
    assert s.sqlalchemy_url().get_secret_value().endswith(f":pw@127.0.0.1:{s.postgres_port}/finpulse")
