"""An embedded broker with its SASL listener on (``FINPULSE_KAFKA_SASL_PORT``) and, for the tests only, two
TLS listeners (SASL_SSL, and SSL that requires a client certificate) with certificates of a throw-away CA.
The tests run Kafka clients with security settings through it. Its own state dir and ports; started once
per session."""

from __future__ import annotations

import secrets

import pytest
from pydantic import SecretStr

from finpulse.settings import Settings
from stack.kafka import EmbeddedKafka
from tests.conftest import TEST_KAFKA_PORT
from tests.finpulse.pki import Pki, make_pki

SASL_USER = "finpulse-test"
SASL_SSL_PORT = TEST_KAFKA_PORT + 303
MTLS_PORT = TEST_KAFKA_PORT + 304


class TlsTestKafka(EmbeddedKafka):
    """The embedded broker plus a SASL_SSL and an SSL (client certificate required) listener."""

    def __init__(self, *, settings: Settings, pki: Pki):
        super().__init__(settings=settings)
        self.pki = pki

    def _client_listeners(self) -> dict[str, int]:
        return {**super()._client_listeners(), "SASL_SSL": SASL_SSL_PORT, "SSL": MTLS_PORT}

    def _listener_settings(self) -> list[str]:
        keystore = self.dir / "keystore.pem"  # a PEM keystore is one file: the key, then the certificate
        keystore.write_text(self.pki.server_key.read_text() + self.pki.server_cert.read_text())
        lines = super()._listener_settings()
        for listener in ("sasl_ssl", "ssl"):
            lines += [f"listener.name.{listener}.ssl.keystore.type=PEM",
                      f"listener.name.{listener}.ssl.keystore.location={keystore}"]
        return lines + ["listener.name.ssl.ssl.truststore.type=PEM",
                        f"listener.name.ssl.ssl.truststore.location={self.pki.ca}",
                        "listener.name.ssl.ssl.client.auth=required"]


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def secure_broker(tmp_path_factory, pki):
    """Settings of the running broker, as the broker itself sees them (PLAINTEXT clients)."""
    # Quote, backslash and a non-ASCII letter: the JAAS line and server.properties must carry them.
    password = secrets.token_urlsafe(12) + '"\\é'
    broker = Settings(home=tmp_path_factory.mktemp("secure-broker"), kafka_port=TEST_KAFKA_PORT + 300,
                      kafka_controller_port=TEST_KAFKA_PORT + 301, kafka_sasl_port=TEST_KAFKA_PORT + 302,
                      kafka_sasl_username=SASL_USER, kafka_sasl_password=password)
    kafka = TlsTestKafka(settings=broker, pki=pki)
    try:
        kafka.up()
        yield broker
    finally:
        kafka.down(purge=True)


def sasl_client(broker: Settings, mechanism: str = "SCRAM-SHA-256", *, password: str | None = None) -> Settings:
    """Settings of a client that logs in to ``broker``'s SASL_PLAINTEXT listener with ``mechanism``."""
    update = {"kafka_security_protocol": "SASL_PLAINTEXT", "kafka_sasl_mechanism": mechanism}
    if password is not None:
        update["kafka_sasl_password"] = SecretStr(password)
    client = broker.model_copy(update=update)
    assert client.bootstrap_servers == [f"127.0.0.1:{broker.kafka_sasl_port}"]
    return client


def sasl_environment(broker: Settings, mechanism: str = "SCRAM-SHA-256", *, password: str | None = None) -> dict:
    """The same client configured the way an operator does it: FINPULSE_* variables."""
    secret = password if password is not None else broker.kafka_sasl_password.get_secret_value()
    return {"FINPULSE_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "FINPULSE_KAFKA_SASL_MECHANISM": mechanism,
            "FINPULSE_KAFKA_SASL_PORT": str(broker.kafka_sasl_port), "FINPULSE_KAFKA_SASL_USERNAME": SASL_USER,
            "FINPULSE_KAFKA_SASL_PASSWORD": secret}


def sasl_ssl_client(broker: Settings, pki: Pki, mechanism: str = "SCRAM-SHA-512", **fields) -> Settings:
    """A client of the SASL_SSL listener that checks the broker's certificate against the test CA."""
    return Settings(home=broker.home, kafka_bootstrap=f"127.0.0.1:{SASL_SSL_PORT}", kafka_security_protocol="SASL_SSL",
                    kafka_sasl_mechanism=mechanism, kafka_sasl_username=SASL_USER,
                    kafka_sasl_password=broker.kafka_sasl_password, kafka_ssl_cafile=pki.ca, **fields)


def mtls_client(broker: Settings, pki: Pki) -> Settings:
    """A client of the SSL listener that authenticates with its certificate."""
    return Settings(home=broker.home, kafka_bootstrap=f"127.0.0.1:{MTLS_PORT}", kafka_security_protocol="SSL",
                    kafka_ssl_cafile=pki.ca, kafka_ssl_certfile=pki.client_cert, kafka_ssl_keyfile=pki.client_key)
