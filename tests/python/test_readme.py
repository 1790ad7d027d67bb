"""The README keeps its promises: the two commands first, and the analyst queries that
tests/pipeline.rs, tests/funnel_options.rs and tests/funnel_breakdowns.rs run shown
verbatim."""
import glob
import os

ROOT = os.path.join(os.path.dirname(__file__), "../..")


def readme():
    with open(os.path.join(ROOT, "README.md")) as f:
        return f.read()


def test_readme_opens_with_main_job_and_test_commands():
    lines = [l for l in readme().splitlines() if l.strip()][:3]
    assert lines[0] == "```"
    assert lines[1].startswith("deploy/local/demo.sh ")
    assert lines[2].startswith("tests/run.sh ")
    with open(os.path.join(ROOT, ".ci/run")) as f:
        assert "tests/run.sh" in f.read()


def test_every_analyst_query_is_in_the_readme_verbatim():
    text = readme()
    files = sorted(glob.glob(os.path.join(ROOT, "docs/queries/*.sql")))
    assert len(files) == 8
    for f in files:
        with open(f) as q:
            assert q.read().strip() in text, f"{os.path.basename(f)} differs from the README"
