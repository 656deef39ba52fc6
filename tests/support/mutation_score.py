"""Print the mutation score of the last `make mutants` run, from mutmut's own summary."""

import json
import sys
from pathlib import Path

stats = json.loads(Path("mutants/mutmut-cicd-stats.json").read_text())
killed = stats["killed"] + stats["timeout"]  # a mutant that hangs the tests is caught too
total = stats["total"] - stats["skipped"]
print(
    f"{killed} of {total} mutants killed: {100 * killed / max(total, 1):.1f}% "
    f"(survived {stats['survived']}, reached by no fast test {stats['no_tests']}, suspicious {stats['suspicious']})"
)
sys.exit(0)
