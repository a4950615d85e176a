"""The spark-submit application file: the same job as ``finpulse pipeline run``.

    spark-submit --master spark://HOST:7077 --jars "$(finpulse stack jars)" pipeline/submit.py run --until-idle 30

spark-submit puts this file's folder (pipeline/) first on sys.path; the project root goes there
instead, so ``pipeline.*`` resolves to the package and not to its modules as top-level names.
"""

import os
import sys

_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]
sys.path.insert(0, os.path.dirname(_here))

from finpulse.cli import setup_logging  # noqa: E402
from pipeline.cli import cli  # noqa: E402

if __name__ == "__main__":
    setup_logging()
    cli(prog_name="pipeline/submit.py")
