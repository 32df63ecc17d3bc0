"""``procctl explain``'s text: a task's lines under its head, a job's tasks indented under it."""

from __future__ import annotations

from procpool.cli.explain import explanation


def test_a_task_is_its_head_and_its_lines() -> None:
    data = {"kind": "task", "task": "3.1", "name": "report", "state": "pending",
            "text": ['waits for its dependency to complete: task "fetch" (3.0, running)']}
    assert explanation(data) == (
        'task 3.1 "report" is pending\n'
        '  waits for its dependency to complete: task "fetch" (3.0, running)'
    )


def test_a_job_counts_its_unfinished_tasks_in_words_and_says_how_many_more() -> None:
    data = {
        "kind": "job", "job": "3", "text": ['job 3 "j" is running: 1 running, 41 pending of 42 tasks'],
        "unfinished": {"running": 1, "dependency": 40, "retry_delay": 1},
        "tasks": [{"task": "3.0", "name": "a", "state": "running", "text": ["attempt 1 is running"]}],
        "more": 41,
    }
    assert explanation(data).splitlines() == [
        'job 3 "j" is running: 1 running, 41 pending of 42 tasks',
        "unfinished tasks: 1 running, 40 waiting on dependencies, 1 waiting to retry",
        '  3.0 "a" running',
        "    attempt 1 is running",
        "  ... and 41 more (procctl explain 3.N for one of them)",
    ]
