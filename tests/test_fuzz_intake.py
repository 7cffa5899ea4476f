"""Fuzzing the intake: malformed panels generated from a valid one.

Dropped or renamed columns; cells replaced by text, infinities, blanks or huge numbers; duplicated,
missing or shuffled rows; files in other or mixed encodings. Every example must end one of two ways: a
clean pass (exit 0) or exit 2 with every problem named (file, and column / city / year where they
apply). Never a traceback, never another exit code, never a written folder after a refusal, and the
input file is never modified.

``validate`` runs in-process through the same code path as the command line (Typer's runner), a few
hundred examples; a smaller set goes through the real ``run --no-bayes`` to check the output contract.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import event as _event
from hypothesis.control import currently_in_test_context
from hypothesis import strategies as st
from typer.testing import CliRunner

import bayesnqp.study  # noqa: F401 - imports PyMC now: it raises the recursion limit on import, which
# Hypothesis reports as a warning (an error here) when it happens inside an example
from bayesnqp import names
from bayesnqp.cli import EXIT_INPUT, app
from conftest import raw_panel

runner = CliRunner()

# Deterministic in CI (the same examples every time, no example database written into the checkout);
# raise max_examples locally to search further.
FUZZ = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
FUZZ_RUN = settings(FUZZ, max_examples=16)

BASE = raw_panel(n_cities=8, years=range(2015, 2019))
# Chinese city names, so the encoding of the file matters.
BASE["city_name"] = [f"城市{c}" for c in BASE["city"]]
COLUMNS = list(BASE.columns)
N_ROWS = len(BASE)

BAD_TEXT = ["", " ", "n/a", "NA", "-", "abc", "1,5", "1e400", "-1e400", "inf", "-inf", "nan", "NaN", "１２",
            "0x10", "1_000", "TRUE", "'7", '"', "\t", "2015.5", "城市"]
HUGE = [1e300, -1e300, 1.7976931348623157e308, 1e200, -1e200, 1e-300, 5e-324, 2**63, -(2**63)]

cell_value = st.one_of(
    st.floats(min_value=0.01, max_value=1e4),  # harmless, so that examples also pass
    st.sampled_from(BAD_TEXT),
    st.sampled_from(HUGE),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.text(max_size=8),
)
mutation = st.one_of(
    st.tuples(st.just("drop_column"), st.sampled_from(COLUMNS)),
    st.tuples(st.just("rename_column"), st.sampled_from(COLUMNS),
              st.one_of(st.sampled_from(["", " ", "City", "year", "city", "nqp", "城市"]), st.text(max_size=6))),
    st.tuples(st.just("cell"), st.integers(0, N_ROWS - 1), st.sampled_from(COLUMNS), cell_value),
    st.tuples(st.just("column_of"), st.sampled_from(COLUMNS), cell_value),
    st.tuples(st.just("duplicate_rows"), st.lists(st.integers(0, N_ROWS - 1), min_size=1, max_size=3)),
    st.tuples(st.just("drop_rows"), st.lists(st.integers(0, N_ROWS - 1), min_size=1, max_size=3)),
    st.tuples(st.just("shuffle"), st.integers(0, 2**32 - 1)),
)
# UTF-8 weighted up so that a fair share of examples passes and reaches the value checks.
# Changes a valid panel survives: row order, plausible values, absent optional columns. Mixed into the
# steps so that many examples pass and the run path is exercised on accepted files too.
NUMERIC = [c for c in COLUMNS if c not in ("city", "city_name", "year")]
benign = st.one_of(
    st.tuples(st.just("shuffle"), st.integers(0, 2**32 - 1)),
    st.tuples(st.just("cell"), st.integers(0, N_ROWS - 1), st.sampled_from(NUMERIC),
              st.one_of(st.floats(min_value=0.01, max_value=1e4), st.sampled_from([1e20, 1e-20, 5e-324]))),
    st.tuples(st.just("drop_column"), st.sampled_from(["city_name", *names.SPLITTERS, names.DIST_HANGZHOU])),
)
ENCODINGS = ["utf-8"] * 6 + ["utf-8-sig", "gb18030", "latin-1", "utf-16", "mixed"]


def mutate(steps: list[tuple]) -> pd.DataFrame:
    frame = BASE.copy().astype(object)
    for step in steps:
        kind = step[0]
        if kind == "drop_column" and step[1] in frame.columns:
            frame = frame.drop(columns=[step[1]])
        elif kind == "rename_column" and step[1] in frame.columns:
            frame = frame.rename(columns={step[1]: step[2]})
        elif kind == "cell" and step[2] in frame.columns and step[1] < len(frame):
            frame.iloc[step[1], list(frame.columns).index(step[2])] = step[3]
        elif kind == "column_of" and step[1] in frame.columns:
            frame[step[1]] = [step[2]] * len(frame)
        elif kind == "duplicate_rows":
            rows = [r for r in step[1] if r < len(frame)]
            frame = pd.concat([frame, frame.iloc[rows]], ignore_index=True)
        elif kind == "drop_rows":
            keep = [i for i in range(len(frame)) if i not in set(step[1])]
            frame = frame.iloc[keep].reset_index(drop=True)
        elif kind == "shuffle":
            frame = frame.sample(frac=1.0, random_state=np.random.RandomState(step[1] % 2**32)).reset_index(drop=True)
    return frame


def write(frame: pd.DataFrame, path: Path, encoding: str) -> None:
    text = frame.to_csv(index=False)
    if encoding == "mixed":  # header and first half UTF-8, the rest GB18030: one file, two encodings
        lines = text.splitlines(keepends=True)
        half = len(lines) // 2
        data = "".join(lines[:half]).encode("utf-8") + "".join(lines[half:]).encode("gb18030", errors="replace")
    else:
        data = text.encode(encoding, errors="replace")
    path.write_bytes(data)


def event(label: str) -> None:
    if currently_in_test_context():  # the plain regression tests below share check_outcome
        _event(label)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


PROBLEM_LINE = re.compile(r"^  - (?P<file>\S.*?)(, column '.*?')?(, city .*?)?(, year -?\d+)?: .+")


def check_outcome(res, path: Path) -> None:
    """Exit 0, or exit 2 with each problem on its own line naming the file; nothing else."""
    assert res.exception is None or isinstance(res.exception, SystemExit), (
        f"crashed: {type(res.exception).__name__}: {res.exception}\n{res.output}")
    assert res.exit_code in (0, EXIT_INPUT), res.output
    event(f"exit {res.exit_code}")  # shown by --hypothesis-show-statistics: both outcomes must occur
    if res.exit_code == EXIT_INPUT:
        header = re.search(r"error: (\d+) problem\(s\) in the input; nothing was written\.", res.output)
        assert header, res.output
        items = [line for line in res.output.splitlines() if line.startswith("  - ")]
        assert len(items) == int(header.group(1)), res.output
        for line in items:
            match = PROBLEM_LINE.match(line)
            assert match and match.group("file") in (str(path), str(path.parent / "study.toml")), line
            event("problem: " + re.sub(r"'.*?'|\d+|city \S+", "_", line.split(": ", 1)[1])[:60])


@FUZZ
@given(steps=st.lists(st.one_of(benign, mutation), max_size=4), encoding=st.sampled_from(ENCODINGS))
def test_validate_passes_or_names_every_problem(tmp_path_factory, steps, encoding):
    path = tmp_path_factory.mktemp("fuzz") / "panel.csv"
    write(mutate(steps), path, encoding)
    before = digest(path)
    res = runner.invoke(app, ["validate", str(path)])
    check_outcome(res, path)
    assert digest(path) == before


@FUZZ_RUN
@given(steps=st.lists(benign, max_size=3), harm=st.lists(mutation, max_size=1),
       encoding=st.sampled_from(ENCODINGS))
def test_run_writes_a_complete_folder_or_nothing(tmp_path_factory, steps, harm, encoding):
    folder = tmp_path_factory.mktemp("fuzzrun")
    path = folder / "panel.csv"
    write(mutate([*steps, *harm]), path, encoding)
    before = digest(path)
    out = folder / "out"
    res = runner.invoke(app, ["run", "--no-bayes", "--data", str(path), "--out", str(out)])
    check_outcome(res, path)
    if res.exit_code == 0:
        assert (out / "summary.json").is_file() and (out / "index.html").is_file()
    else:
        assert not out.exists()
    assert sorted(p.name for p in folder.iterdir()) == sorted(["panel.csv", *(["out"] if res.exit_code == 0 else [])])
    assert digest(path) == before


def test_the_unmutated_base_panel_passes(tmp_path):
    # The fuzzer's starting point must itself be valid, or every example would be a refusal.
    path = tmp_path / "panel.csv"
    for encoding in ("utf-8", "utf-8-sig"):
        write(BASE, path, encoding)
        res = runner.invoke(app, ["validate", str(path)])
        assert res.exit_code == 0, res.output
    assert names.NQP not in BASE.columns


# ---- what the fuzzer found, kept as plain regression tests -----------------------------------------

def _refused(path: Path, *fragments: str) -> None:
    res = runner.invoke(app, ["validate", str(path)])
    check_outcome(res, path)
    assert res.exit_code == EXIT_INPUT, res.output
    text = " ".join(res.output.split())
    for fragment in fragments:
        assert fragment in text, f"{fragment!r} not in:\n{res.output}"


def test_a_year_of_1e300_is_refused_not_a_traceback(tmp_path):
    # Found by the fuzzer: OverflowError from the integer conversion of the year.
    frame = BASE.astype(object)
    frame.loc[0, "year"] = 1e300
    write(frame, tmp_path / "panel.csv", "utf-8")
    _refused(tmp_path / "panel.csv", "column 'year', city R01: row 2: year '1e+300' is not a calendar year")


def test_a_mistyped_year_far_in_the_future_is_refused_at_once(tmp_path):
    # Found by the fuzzer: a year of 10**9 made the balance check list every year in between (a hang).
    frame = BASE.copy()
    frame.loc[5, "year"] = 10**9
    write(frame, tmp_path / "panel.csv", "utf-8")
    _refused(tmp_path / "panel.csv", "year '1000000000' is not a calendar year (1800-2200)")


def test_a_huge_number_is_refused_instead_of_failing_every_analysis(tmp_path):
    # Found by the fuzzer: 1e300 in a control passed validation; the run then exited 0 with every
    # frequentist analysis failed ("array must not contain infs or NaNs") after overflow warnings.
    frame = BASE.copy()
    frame.loc[3, "develop"] = 1e300
    write(frame, tmp_path / "panel.csv", "utf-8")
    _refused(tmp_path / "panel.csv", "column 'develop', city R01, year 2018: cell is too large to compute with")


def test_other_encodings_are_refused_by_name_and_utf16_with_its_mark_is_read(tmp_path):
    path = tmp_path / "panel.csv"
    for encoding in ("gb18030", "mixed"):
        write(BASE, path, encoding)
        _refused(path, "is not UTF-8 text", "save the file as UTF-8")
    write(BASE, path, "utf-16")
    res = runner.invoke(app, ["validate", str(path)])
    assert res.exit_code == 0, res.output
