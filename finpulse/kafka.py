"""Shared Kafka helpers: the clients' connection and security settings in one place, the admin
client and idempotent topic creation.

:func:`client_config` (kafka-python keyword arguments), :func:`confluent_config` (librdkafka
properties) and :func:`spark_source_options` (options of Spark's Kafka source) all come from the
same ``FINPULSE_KAFKA_*`` settings, so ingest's producers, the admin client, the pipeline's lag
consumer and the streaming job connect the same way. Their values hold the SASL password: pass
them to a client, never to a log line (:func:`security_summary` is what to log).
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Iterable
from typing import Any

from finpulse.settings import Settings, get_settings

log = logging.getLogger(__name__)

_JAAS_MODULES = {
    "PLAIN": "org.apache.kafka.common.security.plain.PlainLoginModule",
    "SCRAM-SHA-256": "org.apache.kafka.common.security.scram.ScramLoginModule",
    "SCRAM-SHA-512": "org.apache.kafka.common.security.scram.ScramLoginModule",
}


def _uses_tls(settings: Settings) -> bool:
    return settings.kafka_security_protocol in ("SSL", "SASL_SSL")


def _uses_sasl(settings: Settings) -> bool:
    return settings.kafka_security_protocol.startswith("SASL_")


def _password(settings: Settings) -> str:
    secret = settings.kafka_sasl_password
    return secret.get_secret_value() if secret is not None else ""


def client_config(settings: Settings | None = None) -> dict[str, Any]:
    """Keyword arguments for any kafka-python client (producer, consumer, admin): servers and security."""
    s = settings or get_settings()
    config: dict[str, Any] = {"bootstrap_servers": s.bootstrap_servers,
                              "security_protocol": s.kafka_security_protocol}
    if _uses_sasl(s):
        config.update(sasl_mechanism=s.kafka_sasl_mechanism, sasl_plain_username=s.kafka_sasl_username,
                      sasl_plain_password=_password(s))
    if _uses_tls(s):
        config["ssl_check_hostname"] = s.kafka_ssl_check_hostname
        if s.kafka_ssl_cafile is not None:
            config["ssl_cafile"] = str(s.kafka_ssl_cafile)
        if s.kafka_ssl_certfile is not None:
            config.update(ssl_certfile=str(s.kafka_ssl_certfile), ssl_keyfile=str(s.kafka_ssl_keyfile))
            if s.kafka_ssl_key_password is not None:
                config["ssl_password"] = s.kafka_ssl_key_password.get_secret_value()
    return config


def confluent_config(settings: Settings | None = None) -> dict[str, Any]:
    """The same as librdkafka properties (``confluent_kafka.Producer``)."""
    s = settings or get_settings()
    config: dict[str, Any] = {"bootstrap.servers": ",".join(s.bootstrap_servers),
                              "security.protocol": s.kafka_security_protocol.lower()}
    if _uses_sasl(s):
        config.update({"sasl.mechanism": s.kafka_sasl_mechanism, "sasl.username": s.kafka_sasl_username,
                       "sasl.password": _password(s)})
    if _uses_tls(s):
        config["ssl.endpoint.identification.algorithm"] = "https" if s.kafka_ssl_check_hostname else "none"
        if s.kafka_ssl_cafile is not None:
            config["ssl.ca.location"] = str(s.kafka_ssl_cafile)
        if s.kafka_ssl_certfile is not None:
            config.update({"ssl.certificate.location": str(s.kafka_ssl_certfile),
                           "ssl.key.location": str(s.kafka_ssl_keyfile)})
            if s.kafka_ssl_key_password is not None:
                config["ssl.key.password"] = s.kafka_ssl_key_password.get_secret_value()
    return config


def jaas_quote(value: str) -> str:
    """``value`` as a quoted JAAS option value (backslashes and quotes escaped)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def jaas_config(mechanism: str, username: str, password: str) -> str:
    """A client ``sasl.jaas.config`` line for ``mechanism``."""
    return f"{_JAAS_MODULES[mechanism]} required username={jaas_quote(username)} password={jaas_quote(password)};"


def spark_source_options(settings: Settings | None = None) -> dict[str, str]:
    """Options of Spark's Kafka source (``kafka.``-prefixed client properties): servers and security.

    The CA file and the client certificate travel as PEM text (``ssl.truststore.type=PEM``,
    ``ssl.keystore.type=PEM``) inside the options, so executors on other hosts need no copy of
    the files. ``kafka.sasl.jaas.config`` holds the password: Spark redacts it in its own logs.
    """
    s = settings or get_settings()
    options = {"kafka.bootstrap.servers": ",".join(s.bootstrap_servers),
               "kafka.security.protocol": s.kafka_security_protocol}
    if _uses_sasl(s):
        options["kafka.sasl.mechanism"] = s.kafka_sasl_mechanism
        options["kafka.sasl.jaas.config"] = jaas_config(s.kafka_sasl_mechanism, s.kafka_sasl_username or "",
                                                        _password(s))
    if _uses_tls(s):
        # Kafka's name for "check the host name"; an empty algorithm switches the check off.
        options["kafka.ssl.endpoint.identification.algorithm"] = "https" if s.kafka_ssl_check_hostname else ""
        if s.kafka_ssl_cafile is not None:
            options["kafka.ssl.truststore.type"] = "PEM"
            options["kafka.ssl.truststore.certificates"] = s.kafka_ssl_cafile.read_text()
        if s.kafka_ssl_certfile is not None:
            options["kafka.ssl.keystore.type"] = "PEM"
            options["kafka.ssl.keystore.certificate.chain"] = s.kafka_ssl_certfile.read_text()
            options["kafka.ssl.keystore.key"] = s.kafka_ssl_keyfile.read_text()
            if s.kafka_ssl_key_password is not None:
                options["kafka.ssl.key.password"] = s.kafka_ssl_key_password.get_secret_value()
    return options


def security_summary(settings: Settings | None = None) -> str:
    """How the clients connect, for log lines and errors: protocol, mechanism, user; never a secret."""
    s = settings or get_settings()
    text = s.kafka_security_protocol
    if _uses_sasl(s):
        text += f" {s.kafka_sasl_mechanism} as user {s.kafka_sasl_username!r}"
    return text


class KafkaSecurityError(RuntimeError):
    """The brokers refused the SASL login, or their TLS certificate is not trusted. One line for the
    operator, naming the address and the settings to check, never the password."""


def security_problem(settings: Settings | None = None, *, timeout_s: float = 5.0) -> str | None:
    """Try the TLS handshake and the SASL login once, on the first bootstrap server that accepts a
    connection; the reason as one line when the brokers refuse them, else None.

    None also when no server accepts a connection or something else goes wrong: that is not a
    security problem, and the clients report it. Why not just read the clients' errors: kafka-python
    retries a refused login until its bootstrap times out, then raises a bare timeout, and it often
    loses the broker's error message (the broker sends it and closes the connection at once).
    """
    s = settings or get_settings()
    if s.kafka_security_protocol == "PLAINTEXT":
        return None
    for server in s.bootstrap_servers:
        host, _, port = server.rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
        try:
            sock = socket.create_connection((host, int(port)), timeout=timeout_s)
        except (OSError, ValueError):
            continue
        try:
            return _handshake_problem(s, sock, host, server)
        finally:
            sock.close()
    return None


def _handshake_problem(s: Settings, sock: socket.socket, host: str, server: str) -> str | None:
    import ssl

    if _uses_tls(s):
        try:
            sock = _ssl_context(s).wrap_socket(sock, server_hostname=host)
        except ssl.SSLCertVerificationError as exc:
            return (f"TLS: the certificate of Kafka at {server} is not trusted ({exc.verify_message}); check "
                    "FINPULSE_KAFKA_SSL_CAFILE" + (" and FINPULSE_KAFKA_SSL_CHECK_HOSTNAME" if s.kafka_ssl_check_hostname else ""))
        except (ssl.SSLError, OSError):
            return None
    if not _uses_sasl(s):
        return None
    try:
        return _sasl_refusal(s, sock, host, server)
    except Exception:  # noqa: BLE001 - anything but an answer from the broker is not ours to explain
        return None


def _sasl_refusal(s: Settings, sock: socket.socket, host: str, server: str) -> str | None:
    """One SASL handshake and login over ``sock`` (blocking), with kafka-python's protocol and mechanisms."""
    import kafka.errors as errors
    from kafka.net.sasl import get_sasl_mechanism
    from kafka.protocol.parser import KafkaProtocol
    from kafka.protocol.sasl import SaslAuthenticateRequest, SaslHandshakeRequest

    protocol = KafkaProtocol(client_id="finpulse-login-check")

    def call(request):
        protocol.send_request(request)
        sock.sendall(protocol.send_bytes())
        while True:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("closed by the broker")
            responses = protocol.receive_bytes(data)
            if responses:
                return responses[0][1]

    handshake = call(SaslHandshakeRequest(mechanism=s.kafka_sasl_mechanism, version=1))
    if s.kafka_sasl_mechanism not in handshake.mechanisms:
        return (f"Kafka at {server} does not offer SASL mechanism {s.kafka_sasl_mechanism} (it offers "
                f"{', '.join(handshake.mechanisms) or 'none'}); check FINPULSE_KAFKA_SASL_MECHANISM")
    sasl_log = logging.getLogger("kafka.net.sasl")
    level = sasl_log.level
    sasl_log.setLevel(logging.ERROR)  # "credentials in the clear": the clients themselves say it when they connect
    try:
        mechanism = get_sasl_mechanism(s.kafka_sasl_mechanism)(host=host, **client_config(s))
    finally:
        sasl_log.setLevel(level)
    while not mechanism.is_done():
        response = call(SaslAuthenticateRequest(auth_bytes=mechanism.auth_bytes(), version=1))
        if response.error_code:
            reason = response.error_message or errors.for_code(response.error_code).__name__
            return (f"Kafka at {server} refused the {s.kafka_sasl_mechanism} login of user "
                    f"{s.kafka_sasl_username!r} ({reason}); check FINPULSE_KAFKA_SASL_USERNAME and "
                    "FINPULSE_KAFKA_SASL_PASSWORD")
        mechanism.receive(response.auth_bytes)
    return None


def _ssl_context(s: Settings):
    """The TLS context the kafka-python clients build from the same settings."""
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = s.kafka_ssl_check_hostname
    if s.kafka_ssl_cafile is not None:
        context.load_verify_locations(str(s.kafka_ssl_cafile))
    else:
        context.load_default_certs()
    if s.kafka_ssl_certfile is not None:
        password = s.kafka_ssl_key_password.get_secret_value() if s.kafka_ssl_key_password else None
        context.load_cert_chain(str(s.kafka_ssl_certfile), str(s.kafka_ssl_keyfile), password)
    return context


def admin(settings: Settings | None = None, **kwargs):
    """A kafka-python admin client for the configured cluster; the caller closes it.

    Raises :class:`KafkaSecurityError` when it cannot connect because the brokers refuse the
    login or their certificate is not trusted.
    """
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    settings = settings or get_settings()
    kwargs.setdefault("request_timeout_ms", 15_000)
    kwargs.setdefault("client_id", "finpulse-admin")
    try:
        return KafkaAdminClient(**client_config(settings), **kwargs)
    except KafkaError as exc:
        problem = security_problem(settings)
        if problem is not None:
            raise KafkaSecurityError(problem) from exc
        raise


class EndOffsets:
    """The end offsets of ``topics``, read as often as asked over one consumer that never joins a group or
    commits (what lag and progress are measured against)."""

    def __init__(self, settings: Settings | None, topics: Iterable[str]):
        from kafka import KafkaConsumer

        self.topics = list(dict.fromkeys(topics))
        self._consumer = KafkaConsumer(**client_config(settings or get_settings()), client_id="finpulse-end-offsets",
                                       request_timeout_ms=15_000, enable_auto_commit=False)

    def read(self) -> dict[str, dict[str, int]]:
        """{topic: {partition: end offset}}; a topic that does not exist has no partitions."""
        from kafka import TopicPartition

        partitions = [TopicPartition(t, p) for t in self.topics
                      for p in sorted(self._consumer.partitions_for_topic(t) or [])]
        out: dict[str, dict[str, int]] = {t: {} for t in self.topics}
        for tp, offset in (self._consumer.end_offsets(partitions) if partitions else {}).items():
            out[tp.topic][str(tp.partition)] = int(offset)
        return out

    def close(self) -> None:
        self._consumer.close()


def end_offsets(settings: Settings | None, topics: Iterable[str]) -> dict[str, dict[str, int]]:
    """{topic: {partition: end offset}} once (``EndOffsets`` reads them repeatedly)."""
    reader = EndOffsets(settings, topics)
    try:
        return reader.read()
    finally:
        reader.close()


def ensure_topics(
    names: Iterable[str],
    *,
    settings: Settings | None = None,
    partitions: int | None = None,
    replication: int | None = None,
) -> list[str]:
    """Create the topics that do not exist yet; return the names created. Safe to call concurrently."""
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    settings = settings or get_settings()
    client = admin(settings)
    try:
        existing = set(client.list_topics())
        missing = [n for n in dict.fromkeys(names) if n not in existing]
        created = []
        for name in missing:
            topic = NewTopic(
                name=name,
                num_partitions=partitions or settings.topic_partitions,
                replication_factor=replication or settings.topic_replication,
            )
            try:
                client.create_topics([topic])
                created.append(name)
                log.info("created topic %s (%d partitions)", name, topic.num_partitions)
            except TopicAlreadyExistsError:
                pass  # another process won the race; that is fine
        return created
    finally:
        client.close()


def probe_kafka(settings: Settings, *, timeout_s: float = 5.0) -> str | None:
    """Send a metadata request the way every client connects (servers and security from ``settings``);
    return None when the cluster answers, else the reason it did not (a refused login says so)."""
    with _quiet("kafka"):
        return _describe_cluster(settings, timeout_s)


@contextlib.contextmanager
def _quiet(logger_name: str):
    """A probe expects refused connections while the broker starts: keep them out of the log."""
    logger = logging.getLogger(logger_name)
    previous = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(previous)


def _describe_cluster(settings: Settings, timeout_s: float) -> str | None:
    from kafka.errors import KafkaError

    try:
        client = admin(settings, client_id="finpulse-probe", request_timeout_ms=int(timeout_s * 1000),
                       bootstrap_timeout_ms=int(timeout_s * 1000))
    except KafkaSecurityError as exc:
        return str(exc)
    except (KafkaError, OSError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"
    try:
        client.describe_cluster()
        return None
    except (KafkaError, OSError) as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        client.close()
