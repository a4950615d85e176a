"""Embedded Apache Kafka 4: one JVM in KRaft combined mode (broker + controller), data under HOME/kafka."""

from __future__ import annotations

import base64
import shutil
import subprocess
import time
import uuid
from pathlib import Path

from stack.base import (
    Component,
    ComponentStatus,
    StackError,
    ensure_port_free,
    read_pid,
    require_java,
    stop_pid,
    tail,
)
from finpulse.kafka import probe_kafka  # noqa: F401 - shared with `finpulse status`
from stack.jars import POM_DIR, resolve_classpath

START_TIMEOUT_S = 90.0


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

    def _properties(self) -> str:
        s = self.settings
        return "\n".join([
            "# Written by `finpulse stack up` from FINPULSE_* settings; edits are overwritten.",
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@127.0.0.1:{s.kafka_controller_port}",
            f"listeners=PLAINTEXT://127.0.0.1:{s.kafka_port},CONTROLLER://127.0.0.1:{s.kafka_controller_port}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{s.kafka_port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
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
        problem = probe_kafka(self.settings.bootstrap_servers, timeout_s=3.0)
        where = "external" if self.external else f"data {self.data_dir}"
        return ComponentStatus(self.name, self.address, pid, problem is None, where if problem is None else problem)

    def up(self) -> ComponentStatus:
        if self.external:
            problem = probe_kafka(self.settings.bootstrap_servers, timeout_s=10.0)
            if problem:
                raise StackError(f"external Kafka at {self.address} (FINPULSE_KAFKA_BOOTSTRAP) is unreachable: {problem}")
            return self.status()
        pid = read_pid(self.pid_file)
        if pid is not None:
            self._wait_ready(pid)
            return self.status()
        java = require_java(17)
        classpath = resolve_classpath("kafka.pom.xml", self.settings)
        ensure_port_free(self.settings.kafka_port, "the Kafka broker", "FINPULSE_KAFKA_PORT")
        ensure_port_free(self.settings.kafka_controller_port, "the Kafka controller", "FINPULSE_KAFKA_CONTROLLER_PORT")
        self.dir.mkdir(parents=True, exist_ok=True)
        config = self.dir / "server.properties"
        config.write_text(self._properties())
        if not (self.data_dir / "meta.properties").exists():
            self._format(java, classpath, config)
        with open(self.log_file, "ab") as log:
            proc = subprocess.Popen(
                self._java_cmd(java, classpath, "kafka.Kafka", str(config), heap=self.settings.kafka_heap),
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,  # outlives `finpulse stack up`; stopped by `stack down`
            )
        self.pid_file.write_text(str(proc.pid))
        self._wait_ready(proc.pid, proc=proc)
        return self.status()

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
            problem = probe_kafka(self.settings.bootstrap_servers, timeout_s=2.0)
            if problem is None:
                return
            time.sleep(0.5)
        raise StackError(f"the Kafka broker (pid {pid}) did not answer within {START_TIMEOUT_S:.0f}s "
                         f"({problem}); see {self.log_file}")

    def down(self, *, purge: bool = False) -> None:
        if self.external:
            return
        pid = read_pid(self.pid_file)
        if pid is not None:
            stop_pid(pid, timeout=60.0)
        self.pid_file.unlink(missing_ok=True)
        if purge:
            shutil.rmtree(self.dir, ignore_errors=True)
