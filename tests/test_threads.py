"""How a phase process picks its torch threads (eef_tasks.pipeline.process): the idle cores, measured
now rather than by the lagging load average."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from eef_tasks.pipeline import process


def test_busy_seconds_reads_proc_stat_fields():
    tick = os.sysconf("SC_CLK_TCK")
    # user nice system idle iowait irq softirq steal guest guest_nice
    busy, total = process._busy_seconds(f"cpu  {tick} 0 {tick} {5 * tick} {tick} 0 0 0 7 7")
    assert busy == pytest.approx(2.0)  # user + system; idle and iowait are not busy, guest is in user already
    assert total == pytest.approx(8.0)


def test_idle_cores_leaves_out_the_callers_own_work_and_counts_a_busy_neighbour():
    n = os.cpu_count() or 1
    assert 1 <= process.idle_cores(0.2) <= n
    if not os.path.exists("/proc/stat") or n < 2:
        pytest.skip("needs /proc/stat and 2 cores")
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        # the neighbour keeps one core busy: at most n - 1 are idle, whatever else the machine runs
        assert process.idle_cores(0.5) <= n - 1
    finally:
        spinner.kill()
        spinner.wait()


def test_eef_torch_threads_overrides_the_measurement(monkeypatch):
    monkeypatch.setenv("EEF_TORCH_THREADS", "3")
    assert process.torch_threads("train") == 3 and process.torch_threads("explore") == 3
