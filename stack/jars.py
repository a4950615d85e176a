"""Resolve Java dependencies with Maven into the cache dir (no tarballs exist for us: only Maven Central)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from finpulse.settings import Settings

from stack.base import StackError, require_tool

POM_DIR = Path(__file__).resolve().parent
_JAR = re.compile(r"^(?P<artifact>.+?)-(?P<version>\d[^/]*)\.jar$")


def artifact_name(jar: str | Path) -> str:
    """'lz4-java-1.10.1.jar' -> 'lz4-java' (the version starts at the first '-<digit>')."""
    name = Path(jar).name
    match = _JAR.match(name)
    return match.group("artifact") if match else name.removesuffix(".jar")


def resolve_classpath(pom: str, settings: Settings, *, properties: dict[str, str] | None = None) -> list[Path]:
    """Jars for ``pom`` (in stack/), resolved by ``mvn`` into CACHE/m2; cached per pom and properties."""
    cache = settings.cache
    cache.mkdir(parents=True, exist_ok=True)
    tag = "-".join(f"{k}={v}" for k, v in sorted((properties or {}).items()))
    out = cache / f"{Path(pom).stem}{'-' + tag if tag else ''}.classpath"
    if not out.exists() or out.stat().st_mtime < (POM_DIR / pom).stat().st_mtime:
        mvn = require_tool("mvn", "apt-get install maven")
        cmd = [
            mvn, "-q", "-B", "-f", str(POM_DIR / pom),
            f"-Dmaven.repo.local={cache / 'm2'}",
            "dependency:build-classpath", f"-Dmdep.outputFile={out}.tmp",
        ] + [f"-D{k}={v}" for k, v in (properties or {}).items()]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            errors = [ln for ln in proc.stdout.splitlines() if "[ERROR]" in ln] or proc.stderr.splitlines()
            raise StackError(f"Maven could not resolve {pom}: {(errors or ['no output'])[0].strip()[:400]}")
        Path(f"{out}.tmp").replace(out)
    jars = [Path(p) for p in out.read_text().strip().split(":") if p]
    missing = [j for j in jars if not j.exists()]
    if missing:
        out.unlink()  # the Maven repo was cleaned under us: resolve again next time
        raise StackError(f"cached classpath points at missing jar {missing[0]}; run the command again")
    return jars


def spark_kafka_jars(settings: Settings) -> list[Path]:
    """Spark's Kafka source for the installed pyspark, minus jars pyspark already ships."""
    import pyspark

    version = pyspark.__version__
    jars = resolve_classpath("spark-kafka.pom.xml", settings, properties={"spark.version": version})
    shipped = {artifact_name(j) for j in (Path(pyspark.__file__).parent / "jars").glob("*.jar")}
    return [j for j in jars if artifact_name(j) not in shipped]
