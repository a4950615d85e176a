"""The same job, unchanged, under spark-submit on a standalone cluster (a master and one worker
started from pyspark's own jars on this machine, bound to 127.0.0.1)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.pipeline.conftest import (
    REPO,
    job_env,
    new_topics,
    produce,
    scratch_database,
    snapshot,
    snapshot_diff,
    tail,
)
from tests.conftest import free_port

pytestmark = [pytest.mark.spark, pytest.mark.slow, pytest.mark.stack]




def _wait_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"exited {proc.returncode}:\n{tail(log)}"
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise AssertionError(f"port {port} not open after {timeout}s:\n{tail(log)}")


def _wait_for_worker(log: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while "Successfully registered with master" not in log.read_text(errors="replace"):
        assert proc.poll() is None, f"worker exited:\n{tail(log)}"
        assert time.monotonic() < deadline, f"worker did not register:\n{tail(log)}"
        time.sleep(0.5)


@pytest.fixture
def standalone_cluster(tmp_path):
    """spark://127.0.0.1:PORT with one worker (2 cores, 1 GiB); yields (master URL, SPARK_HOME, env)."""
    import pyspark

    spark_home = Path(pyspark.__file__).parent
    env = {**os.environ, "SPARK_HOME": str(spark_home), "SPARK_LOCAL_IP": "127.0.0.1",
           "SPARK_LOG_DIR": str(tmp_path / "logs"), "SPARK_WORKER_DIR": str(tmp_path / "work"),
           "PYSPARK_PYTHON": sys.executable}
    port, ui, worker_port, worker_ui = (free_port() for _ in range(4))
    spark_class = str(spark_home / "bin" / "spark-class")
    procs = []
    try:
        master_log = tmp_path / "master.log"
        with master_log.open("wb") as out:
            master = subprocess.Popen([spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                                       "--port", str(port), "--webui-port", str(ui)],
                                      env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(master)
        _wait_port(port, master, master_log)
        url = f"spark://127.0.0.1:{port}"
        worker_log = tmp_path / "worker.log"
        with worker_log.open("wb") as out:
            worker = subprocess.Popen([spark_class, "org.apache.spark.deploy.worker.Worker", url, "--host", "127.0.0.1",
                                       "--port", str(worker_port), "--webui-port", str(worker_ui), "--cores", "2",
                                       "--memory", "1g", "--work-dir", str(tmp_path / "work")],
                                      env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(worker)
        _wait_for_worker(worker_log, worker)
        yield url, spark_home, env
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_spark_submit_to_a_standalone_cluster_gives_the_same_tables(stack, stream, reference, standalone_cluster,
                                                                      tmp_path):
    from stack import spark_jars

    url, spark_home, cluster_env = standalone_cluster
    with scratch_database(stack) as settings:
        topics = new_topics(stack)
        produce(stack, topics, stream.messages)
        env = {**job_env(settings, topics, tmp_path), **{k: cluster_env[k] for k in ("SPARK_HOME", "SPARK_LOCAL_IP")},
               "PYSPARK_PYTHON": sys.executable}
        env.pop("FINPULSE_SPARK_MASTER")  # under spark-submit the master comes from --master only
        executor_env = {k: env[k] for k in ("HF_HUB_OFFLINE", "OMP_NUM_THREADS", "FINPULSE_LOG_LEVEL") if k in env}
        cmd = [str(spark_home / "bin" / "spark-submit"), "--master", url, "--jars", ",".join(spark_jars(stack)),
               "--conf", "spark.executor.memory=512m", "--conf", "spark.executor.cores=2",
               "--conf", f"spark.pyspark.python={sys.executable}",
               *[a for k, v in executor_env.items() for a in ("--conf", f"spark.executorEnv.{k}={v}")],
               str(REPO / "pipeline" / "submit.py"), "run", "--until-idle", "6", "--query-name", "cluster"]
        log = tmp_path / "submit.log"
        with log.open("wb") as out:
            proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=600)
        assert proc.returncode == 0, tail(log)
        # The tasks ran in an executor of the standalone worker, not in a local driver.
        work = Path(cluster_env["SPARK_WORKER_DIR"])
        assert list(work.glob("app-*/*/stderr")), f"no executor ran on the worker:\n{tail(log)}"
        got = snapshot(settings)
        assert not snapshot_diff(got, reference["snapshot"]), snapshot_diff(got, reference["snapshot"])
