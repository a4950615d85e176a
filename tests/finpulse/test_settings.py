import re
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from finpulse.settings import Settings, env_table, redact_url, settings_error_line


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


def test_an_empty_max_offsets_per_trigger_means_no_limit(monkeypatch):
    monkeypatch.setenv("FINPULSE_PIPELINE_MAX_OFFSETS_PER_TRIGGER", "")
    assert Settings().pipeline_max_offsets_per_trigger is None
    monkeypatch.setenv("FINPULSE_PIPELINE_MAX_OFFSETS_PER_TRIGGER", "500")
    assert Settings().pipeline_max_offsets_per_trigger == 500
    monkeypatch.setenv("FINPULSE_PIPELINE_MAX_OFFSETS_PER_TRIGGER", "0")
    with pytest.raises(ValidationError):
        Settings()


@pytest.mark.parametrize("given", [
    "postgresql://u:pw@db:5432/x?sslmode=verify-full&application_name=fp",  # what `finpulse db url` prints
    "postgres://u:pw@db:5432/x?sslmode=verify-full&application_name=fp",  # Heroku-style
    "postgresql+psycopg2://u:pw@db:5432/x?sslmode=verify-full&application_name=fp",
])
def test_libpq_database_urls_are_read_as_psycopg2(monkeypatch, given):
    monkeypatch.setenv("FINPULSE_DATABASE_URL", given)
    url = Settings().sqlalchemy_url().get_secret_value()
    assert url == "postgresql+psycopg2://u:pw@db:5432/x?sslmode=verify-full&application_name=fp"


@pytest.mark.parametrize("given", ["postgresql+psycopg://u:hunter2@db/x", "postgresql+asyncpg://u:hunter2@db/x",
                                   "mysql://u:hunter2@db/x", "u:hunter2@db/x"])
def test_other_database_drivers_are_refused_in_one_line_without_the_password(monkeypatch, given):
    monkeypatch.setenv("FINPULSE_DATABASE_URL", given)
    with pytest.raises(ValidationError) as info:
        Settings()
    line = settings_error_line(info.value)
    assert "\n" not in line and line.startswith("invalid settings: FINPULSE_DATABASE_URL: ")
    assert "write postgresql://user:password@host:5432/database" in line
    assert "hunter2" not in line and "hunter2" not in str(info.value)


def test_a_copied_settings_object_still_gets_a_psycopg2_url():
    # model_copy(update=...) skips validation (the scratch databases of the tests use it).
    copied = Settings().model_copy(update={"database_url": SecretStr("postgresql://u:pw@db/x")})
    assert copied.sqlalchemy_url().get_secret_value() == "postgresql+psycopg2://u:pw@db/x"


def _kafka(**fields) -> Settings:
    return Settings(kafka_bootstrap="k1:9093", **fields)


def test_incomplete_or_contradictory_kafka_security_is_refused_naming_the_variables(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("pem")
    cases = {
        "FINPULSE_KAFKA_SECURITY_PROTOCOL=SASL_SSL needs FINPULSE_KAFKA_SASL_USERNAME and FINPULSE_KAFKA_SASL_PASSWORD":
            dict(kafka_security_protocol="SASL_SSL", kafka_sasl_username="u"),
        "FINPULSE_KAFKA_SSL_CAFILE set but FINPULSE_KAFKA_SECURITY_PROTOCOL=PLAINTEXT does not use TLS":
            dict(kafka_ssl_cafile=ca),
        "FINPULSE_KAFKA_SASL_USERNAME/PASSWORD are set but FINPULSE_KAFKA_SECURITY_PROTOCOL=SSL sends no credentials":
            dict(kafka_security_protocol="SSL", kafka_sasl_username="u", kafka_sasl_password="p"),
        "FINPULSE_KAFKA_SSL_CERTFILE and FINPULSE_KAFKA_SSL_KEYFILE go together":
            dict(kafka_security_protocol="SSL", kafka_ssl_certfile=ca),
    }
    for message, fields in cases.items():
        with pytest.raises(ValidationError, match=re.escape(message)):
            _kafka(**fields)
    with pytest.raises(ValidationError, match="the embedded broker has no TLS listener"):
        Settings(kafka_security_protocol="SSL")
    with pytest.raises(ValidationError, match="needs FINPULSE_KAFKA_SASL_PORT"):
        Settings(kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_username="u", kafka_sasl_password="p")
    with pytest.raises(ValidationError) as info:
        _kafka(kafka_security_protocol="SSL", kafka_ssl_cafile=tmp_path / "missing.pem")
    assert settings_error_line(info.value) == "invalid settings: FINPULSE_KAFKA_SSL_CAFILE: Path does not point to a file"


def test_kafka_security_settings_read_from_the_environment(monkeypatch, tmp_path):
    (tmp_path / "ca.pem").write_text("pem")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FINPULSE_KAFKA_BOOTSTRAP", "k1:9093")
    monkeypatch.setenv("FINPULSE_KAFKA_SECURITY_PROTOCOL", "sasl_ssl")  # case does not matter
    monkeypatch.setenv("FINPULSE_KAFKA_SASL_MECHANISM", "scram-sha-512")
    monkeypatch.setenv("FINPULSE_KAFKA_SASL_USERNAME", "ingest")
    monkeypatch.setenv("FINPULSE_KAFKA_SASL_PASSWORD", "hunter2")
    monkeypatch.setenv("FINPULSE_KAFKA_SSL_CAFILE", "ca.pem")
    s = Settings()
    assert (s.kafka_security_protocol, s.kafka_sasl_mechanism) == ("SASL_SSL", "SCRAM-SHA-512")
    assert s.kafka_ssl_cafile == tmp_path / "ca.pem"  # absolute: child processes run elsewhere
    assert "hunter2" not in repr(s)


def test_the_embedded_brokers_sasl_listener_is_what_sasl_clients_use():
    plain = Settings(kafka_port=19092, kafka_sasl_port=19094, kafka_sasl_username="u", kafka_sasl_password="p")
    assert plain.bootstrap_servers == ["127.0.0.1:19092"]
    sasl = plain.model_copy(update={"kafka_security_protocol": "SASL_PLAINTEXT"})
    assert sasl.bootstrap_servers == ["127.0.0.1:19094"]
    with pytest.raises(ValidationError, match="letters, digits"):
        Settings(kafka_sasl_port=19094, kafka_sasl_username='a"b', kafka_sasl_password="p")


@pytest.mark.parametrize("url, shown", [
    ("https://hooks.slack.com/services/T0001/B0002/XXXXsecretXXXX", "https://hooks.slack.com/***"),
    ("https://alerts:pa55@hooks.example.com:8443/in?token=t0k&key=k3y&sig=s1g#frag",
     "https://***@hooks.example.com:8443/***?token=***&key=***&sig=***#***"),
    ("https://example.com/?x=1", "https://example.com?x=***"),
    ("http://127.0.0.1:8008", "http://127.0.0.1:8008"),
    ("http://[::1]:9/a", "http://[::1]:9/***"),
    ("not a url", "***"),
])
def test_urls_are_redacted_to_scheme_and_host(url, shown):
    assert redact_url(url) == shown


def test_settings_error_line_names_every_bad_variable_and_no_value(monkeypatch):
    monkeypatch.setenv("FINPULSE_TOPIC_PARTITIONS", "0")
    monkeypatch.setenv("FINPULSE_ALERTS_SMTP_PORT", "smtp-s3cret")
    with pytest.raises(ValidationError) as info:
        Settings()
    line = settings_error_line(info.value)
    assert line.startswith("invalid settings: ")
    assert "FINPULSE_TOPIC_PARTITIONS: Input should be greater than or equal to 1" in line
    assert "FINPULSE_ALERTS_SMTP_PORT: Input should be a valid integer" in line
    assert "smtp-s3cret" not in line and "smtp-s3cret" not in str(info.value)
