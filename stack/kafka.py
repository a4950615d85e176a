"""Embedded Apache Kafka 4: one JVM in KRaft combined mode (broker + controller), data under HOME/kafka.

Clients reach it on a PLAINTEXT listener (FINPULSE_KAFKA_PORT). With FINPULSE_KAFKA_SASL_PORT it
also has a SASL_PLAINTEXT listener that takes PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512 logins of
one user, FINPULSE_KAFKA_SASL_USERNAME / FINPULSE_KAFKA_SASL_PASSWORD: the PLAIN password is in the
broker's JAAS line (server.properties, mode 600), the SCRAM credentials are (re)written through
the admin API at every start. It is what the tests run the clients' SASL code through.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import time
import uuid
from pathlib import Path

from finpulse.kafka import KafkaSecurityError, admin, jaas_quote, security_summary
from finpulse.settings import Settings

from stack.base import (
    Component,
    ComponentStatus,
    ServiceError,
    StackError,
    ensure_port_free,
    read_identity,
    read_pid,
    require_java,
    stop_pid,
    tail,
    write_pid_file,
    write_private,
)
from finpulse.kafka import probe_kafka  # one probe for the stack and `finpulse status`
from stack.jars import POM_DIR, resolve_classpath

START_TIMEOUT_S = 90.0
SCRAM_MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512")


def _property_value(text: str) -> str:
    """``text`` as a java.util.Properties value: backslashes escaped, non-ASCII as \\uXXXX (the file is read as Latin-1)."""
    out = []
    for char in text.replace("\\", "\\\\").replace("\n", "\\n"):
        if ord(char) < 128:
            out.append(char)
        else:  # one escape per UTF-16 unit: a character beyond U+FFFF takes two
            units = char.encode("utf-16-be")
            out.extend(f"\\u{int.from_bytes(units[i:i + 2], 'big'):04x}" for i in range(0, len(units), 2))
    return "".join(out)


def new_cluster_id() -> str:
    """16 random bytes as URL-safe base64 without padding, as Kafka's ``Uuid.randomUuid`` makes them.

    Like Kafka, never one starting with '-': the storage tool's argument parser would read
    ``-t -abc...`` as an option and refuse to format (1 fresh install in 64 would fail).
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


class EmbeddedKafka(Component):
    name = "kafka"

    @property
    def external(self) -> bool:
        return not self.settings.embedded_kafka

    @property
    def dir(self) -> Path:
        return self.settings.home / "kafka"

    @property
    def data_dir(self) -> Path:
        return self.dir / "data"

    @property
    def pid_file(self) -> Path:
        return self.dir / "kafka.pid"

    @property
    def log_file(self) -> Path:
        return self.dir / "kafka.log"

    @property
    def address(self) -> str:
        return ",".join(self.settings.bootstrap_servers)

    @property
    def _plaintext(self) -> Settings:
        """Settings reaching this broker on its PLAINTEXT listener (readiness, SCRAM set-up)."""
        return self.settings.model_copy(update={"kafka_security_protocol": "PLAINTEXT", "kafka_bootstrap": None,
                                                "kafka_sasl_port": None})

    def _client_listeners(self) -> dict[str, int]:
        """The listeners clients connect to: name (also its security protocol) -> port."""
        s = self.settings
        listeners = {"PLAINTEXT": s.kafka_port}
        if s.kafka_sasl_port is not None:
            listeners["SASL_PLAINTEXT"] = s.kafka_sasl_port
        return listeners

    def _listener_settings(self) -> list[str]:
        """Per-listener properties: the SASL mechanisms of each SASL listener and their JAAS lines."""
        s = self.settings
        sasl_listeners = [name.lower() for name in self._client_listeners() if name.startswith("SASL_")]
        if not sasl_listeners:
            return []
        user, password = s.kafka_sasl_username, s.kafka_sasl_password.get_secret_value()
        # PLAIN checks a login against this line's user_<name> option; SCRAM against the
        # credentials in the cluster metadata (written after every start).
        plain = f"org.apache.kafka.common.security.plain.PlainLoginModule required user_{user}={jaas_quote(password)};"
        lines = ["sasl.enabled.mechanisms=PLAIN," + ",".join(SCRAM_MECHANISMS)]
        for listener in sasl_listeners:
            lines.append(f"listener.name.{listener}.plain.sasl.jaas.config={_property_value(plain)}")
            lines += [f"listener.name.{listener}.{m.lower()}.sasl.jaas.config="
                      "org.apache.kafka.common.security.scram.ScramLoginModule required;" for m in SCRAM_MECHANISMS]
        return lines

    def _listener_lines(self) -> list[str]:
        s = self.settings
        listeners = self._client_listeners()
        addresses = ",".join(f"{name}://127.0.0.1:{port}" for name, port in listeners.items())
        protocols = ",".join(["CONTROLLER:PLAINTEXT", *(f"{name}:{name}" for name in listeners)])
        return [
            f"listeners={addresses},CONTROLLER://127.0.0.1:{s.kafka_controller_port}",
            f"advertised.listeners={addresses}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            f"listener.security.protocol.map={protocols}",
            *self._listener_settings(),
        ]

    def _properties(self) -> str:
        s = self.settings
        return "\n".join([
            "# Written by `finpulse stack up` from FINPULSE_* settings; edits are overwritten.",
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@127.0.0.1:{s.kafka_controller_port}",
            *self._listener_lines(),
            f"log.dirs={self.data_dir}",
            f"num.partitions={s.topic_partitions}",
            # A single node can hold one replica only.
            "offsets.topic.replication.factor=1",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            "group.initial.rebalance.delay.ms=0",
            "auto.create.topics.enable=false",
            "log.retention.hours=168",
            "",
        ])

    def _java_cmd(self, java: str, classpath: list[Path], main: str, *args: str, heap: str) -> list[str]:
        return [
            java, f"-Xmx{heap}", "-XX:+UseG1GC", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={POM_DIR / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={self.dir / 'logs'}",
            "-cp", ":".join(str(j) for j in classpath), main, *args,
        ]

    def status(self) -> ComponentStatus:
        pid = None if self.external else read_pid(self.pid_file)
        problem = probe_kafka(self.settings, timeout_s=3.0)
        where = f"external, {security_summary(self.settings)}" if self.external else f"data {self.data_dir}"
        if not self.external and self.settings.kafka_sasl_port is not None:
            where += f"; SASL_PLAINTEXT on 127.0.0.1:{self.settings.kafka_sasl_port}"
        return ComponentStatus(self.name, self.address, pid, problem is None, where if problem is None else problem)

    def up(self) -> ComponentStatus:
        if self.external:
            problem = probe_kafka(self.settings, timeout_s=10.0)
            if problem:
                raise StackError(f"external Kafka at {self.address} (FINPULSE_KAFKA_BOOTSTRAP) is unreachable: {problem}")
            return self.status()
        pid = read_pid(self.pid_file)
        if pid is not None:
            self._wait_ready(pid)
            self._store_scram_credentials()
            return self.status()
        java = require_java(17)
        classpath = resolve_classpath("kafka.pom.xml", self.settings)
        ensure_port_free(self.settings.kafka_port, "the Kafka broker", "FINPULSE_KAFKA_PORT")
        ensure_port_free(self.settings.kafka_controller_port, "the Kafka controller", "FINPULSE_KAFKA_CONTROLLER_PORT")
        if self.settings.kafka_sasl_port is not None:
            ensure_port_free(self.settings.kafka_sasl_port, "the Kafka SASL listener", "FINPULSE_KAFKA_SASL_PORT")
        self.dir.mkdir(parents=True, exist_ok=True)
        config = self.dir / "server.properties"
        write_private(config, self._properties())  # it can hold the SASL user's password
        if not (self.data_dir / "meta.properties").exists():
            self._format(java, classpath, config)
        with open(self.log_file, "ab") as log:
            proc = subprocess.Popen(
                self._java_cmd(java, classpath, "kafka.Kafka", str(config), heap=self.settings.kafka_heap),
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,  # outlives `finpulse stack up`; stopped by `stack down`
            )
        try:
            write_pid_file(self.pid_file, proc.pid)
        except ServiceError:
            pass  # exited at once: _wait_ready reports it with the log
        self._wait_ready(proc.pid, proc=proc)
        self._store_scram_credentials()
        return self.status()

    def _store_scram_credentials(self) -> None:
        """(Re)write the SASL user's SCRAM credentials, through the PLAINTEXT listener."""
        s = self.settings
        if s.kafka_sasl_port is None:
            return
        from kafka.admin import UserScramCredentialUpsertion

        client = admin(self._plaintext)
        try:
            for mechanism in SCRAM_MECHANISMS:  # one request each: Kafka alters a user once per request
                errors = client.alter_user_scram_credentials([UserScramCredentialUpsertion(
                    s.kafka_sasl_username, mechanism, s.kafka_sasl_password.get_secret_value())])
                error = (errors or {}).get(s.kafka_sasl_username)
                if error:
                    raise StackError(f"storing the {mechanism} credentials of {s.kafka_sasl_username!r} "
                                     f"in the embedded broker failed: {error}")
        finally:
            client.close()

    def _format(self, java: str, classpath: list[Path], config: Path) -> None:
        cluster_file = self.dir / "cluster.id"
        # An id starting with '-' never formatted anything (the tool refused it), so replacing it is safe.
        if not cluster_file.exists() or cluster_file.read_text().startswith("-"):
            cluster_file.write_text(new_cluster_id())
        cmd = self._java_cmd(java, classpath, "kafka.tools.StorageTool", "format",
                             "-t", cluster_file.read_text().strip(), "-c", str(config), "--ignore-formatted",
                             heap="256m")
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            detail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise StackError(f"formatting Kafka storage in {self.data_dir} failed: {detail[0][:300]}")

    def _wait_ready(self, pid: int, proc: subprocess.Popen | None = None) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        problem = "not probed"
        while time.monotonic() < deadline:
            exited = proc.poll() is not None if proc is not None else read_pid(self.pid_file) is None
            if exited:
                self.pid_file.unlink(missing_ok=True)
                raise StackError(
                    f"the Kafka broker exited during start; last lines of {self.log_file}:\n{tail(self.log_file)}"
                )
            # The PLAINTEXT listener: SCRAM logins work only once the credentials are stored.
            problem = probe_kafka(self._plaintext, timeout_s=2.0)
            if problem is None:
                return
            time.sleep(0.5)
        raise StackError(f"the Kafka broker (pid {pid}) did not answer within {START_TIMEOUT_S:.0f}s "
                         f"({problem}); see {self.log_file}")

    def purge_paths(self) -> list[tuple[Path, str]]:
        return [] if self.external or not self.dir.exists() else [(self.dir, "Kafka data and configuration")]

    def down(self, *, purge: bool = False) -> None:
        if self.external:
            return
        broker = read_identity(self.pid_file)  # a stale file (its pid reused since) is removed, nothing signalled
        if broker is not None:
            stop_pid(broker, timeout=60.0)
        self.pid_file.unlink(missing_ok=True)
        if purge:
            shutil.rmtree(self.dir, ignore_errors=True)
