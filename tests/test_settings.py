"""The one table of environment variables: every entry point reads through it, the docs show
it, and a malformed value is an error naming the variable."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from millrace import parse
from millrace.common.settings import VARIABLES, SettingsError, markdown_table, read

ROOT = Path(__file__).resolve().parents[1]


def test_the_docs_show_exactly_the_table():
    assert markdown_table() in (ROOT / "docs" / "environment.md").read_text()


def test_every_variable_the_code_names_is_in_the_table():
    named = set()
    for path in [*(ROOT / "worker" / "millrace").rglob("*.py"), *(ROOT / "operator").rglob("*.py")]:
        named |= set(re.findall(r"\"(MILLRACE_[A-Z_]+)\"", path.read_text()))
    assert named - {"MILLRACE_TEST_TAG"} <= set(VARIABLES), named - set(VARIABLES)


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("MILLRACE_PROCESSES", "three", "MILLRACE_PROCESSES must be an integer, got 'three'"),
        ("MILLRACE_PROCESSES", "0", "MILLRACE_PROCESSES must be at least 1, got 0"),
        ("MILLRACE_EPOCH_SECONDS", "-1", "MILLRACE_EPOCH_SECONDS must be positive, got '-1'"),
        ("MILLRACE_CONNECT_TIMEOUT", "soon", "MILLRACE_CONNECT_TIMEOUT must be a number, got 'soon'"),
        ("MILLRACE_CONNECT_TIMEOUT", "nan", "MILLRACE_CONNECT_TIMEOUT must be positive, got 'nan'"),
        ("MILLRACE_METRICS_PORT", "http", "MILLRACE_METRICS_PORT must be an integer, got 'http'"),
        ("MILLRACE_METRICS_PORT", "0", "MILLRACE_METRICS_PORT must be a port number (1-65535), got 0"),
    ],
)
def test_a_malformed_value_names_the_variable(name, text, message):
    with pytest.raises(SettingsError, match=re.escape(message)):
        read({name: text}, name)


def test_unset_means_the_default_or_an_error_when_required():
    assert read({"MILLRACE_PORT": ""}, "MILLRACE_PORT") == 2101
    with pytest.raises(SettingsError, match="MILLRACE_SERVICE is not set"):
        read({}, "MILLRACE_SERVICE", required=True)


def test_proc_env_takes_the_reference_engines_names_too():
    env = {
        "BYTEWAX_ADDRESSES": "a:1;b:2",
        "BYTEWAX_POD_NAME": "df-1",
        "BYTEWAX_STATEFULSET_NAME": "df",
        "BYTEWAX_WORKERS_PER_PROCESS": "3",
    }
    assert parse.proc_env(env) == {"proc_id": 1, "addresses": ["a:1", "b:2"], "worker_count_per_proc": 3}


@pytest.mark.parametrize(
    "env, message",
    [
        ({}, "set MILLRACE_ADDRESSES or MILLRACE_HOSTFILE_PATH"),
        ({"MILLRACE_ADDRESSES": "a:1"}, "set MILLRACE_PROCESS_ID or MILLRACE_POD_NAME"),
        ({"MILLRACE_ADDRESSES": "a:1", "MILLRACE_PROCESS_ID": "x"}, "MILLRACE_PROCESS_ID must be an integer"),
        (
            {"MILLRACE_ADDRESSES": "a:1", "MILLRACE_POD_NAME": "other-1", "MILLRACE_STATEFULSET_NAME": "df"},
            "cannot read a process id from the pod name 'other-1'",
        ),
        (
            {"MILLRACE_ADDRESSES": "a:1", "MILLRACE_PROCESS_ID": "0", "MILLRACE_WORKERS_PER_PROCESS": "0"},
            "MILLRACE_WORKERS_PER_PROCESS must be at least 1",
        ),
    ],
)
def test_proc_env_says_what_is_missing_or_wrong(env, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        parse.proc_env(env)
